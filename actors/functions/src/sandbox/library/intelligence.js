// ---- Intelligence: BaseModelProcessor, BaseDecisionEngine, BaseLearningEngine, BasePredictor ---

function sigmoid(z) {
  return z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z));
}

// "Summarise {{text}} in {{n}} words" with values from `input` (objects as JSON).
function fillTemplate(template, input) {
  return template.replace(/\{\{\s*([^{}\s]+)\s*\}\}/g, (_, path) => {
    const value = path === "." ? input : getPath(input, path);
    if (value === undefined) {
      throw new KlfInputError(`input.${path}: is required by the prompt template`, {
        path: `input.${path}`,
      });
    }
    return typeof value === "string" ? value : JSON.stringify(value);
  });
}

// The JSON a model answered, tolerating a ```json fence around it.
function parseModelJson(text) {
  const fenced = /```(?:json)?\s*([\s\S]*?)```/.exec(text);
  const body = (fenced === null ? text : fenced[1]).trim();
  try {
    return JSON.parse(body);
  } catch (error) {
    throw new Error(`the model did not answer JSON (${error.message}): ${show(text)}`);
  }
}

/**
 * One interface over a model: a local linear or logistic model (weights in settings), or the
 * node's model provider through ctx.model (capability "model").
 */
export class BaseModelProcessor extends BaseFunction {
  static defaults = { model: { kind: "linear", weights: {}, bias: 0 } };

  /**
   * Local models: `{score, label?}`. Provider models: `{text, json?, model, usage}` for an input
   * that fills settings.model.prompt (or is the prompt itself, as text or JSON).
   */
  async infer(input, ctx) {
    const model = this.#model();
    if (model.kind !== "provider") return this.score(input);
    ctx = ctxOf(this, ctx);
    const request = { prompt: this.#prompt(model, input) };
    if (model.system !== undefined) request.system = model.system;
    for (const key of ["maxTokens", "temperature"]) {
      if (model[key] !== undefined) request[key] = model[key];
    }
    if (model.json === true) request.json = true;
    const answer = await ctx.model.complete(request);
    const out = { text: answer.text, model: answer.model, usage: answer.usage };
    if (model.json === true) out.json = parseModelJson(answer.text);
    return out;
  }

  /** A local model's `{score, label?}`; every weighted feature must be a number. */
  score(features, where = "features") {
    const model = this.#model();
    if (model.kind === "provider") {
      throw new ConfigError(
        "settings.model: score() needs a local model (linear or logistic); use infer() with a provider",
        { path: "settings.model.kind" },
      );
    }
    requireObject(features, where);
    let z = model.bias;
    for (const name of Object.keys(model.weights)) {
      const value = features[name];
      if (typeof value !== "number" || !Number.isFinite(value)) {
        throw new KlfInputError(
          `${where}.${name}: expected a number (the model weighs it), got ${show(value)}`,
          { path: `${where}.${name}` },
        );
      }
      z += model.weights[name] * value;
    }
    const score = model.kind === "logistic" ? sigmoid(z) : z;
    const out = { score };
    if (model.threshold !== undefined) {
      const positive = score >= model.threshold;
      out.label = Array.isArray(model.labels) ? model.labels[positive ? 1 : 0] : positive ? 1 : 0;
    }
    return out;
  }

  /** Each feature's share of a local model's raw score, largest first. */
  explain(features) {
    const model = this.#model();
    this.score(features);
    return Object.keys(model.weights)
      .map((feature) => ({ feature, contribution: model.weights[feature] * features[feature] }))
      .sort((a, b) =>
        Math.abs(b.contribution) - Math.abs(a.contribution) || (a.feature < b.feature ? -1 : 1)
      );
  }

  /** Copies of the records with `score` (and `label`) added; provider models add `inference`. */
  async inferAll(records, ctx) {
    requireRecords(records, "records");
    const model = this.#model();
    const out = [];
    for (let i = 0; i < records.length; i++) {
      if (model.kind === "provider") {
        out.push({ ...records[i], inference: await this.infer(records[i], ctx) });
      } else out.push({ ...records[i], ...this.score(records[i], `records[${i}]`) });
    }
    return out;
  }

  /** `{records}` → `{records}`; `{features}` or the features themselves → infer. */
  async execute(input, ctx) {
    if (isPlainObject(input) && Array.isArray(input.records)) {
      return { records: await this.inferAll(input.records, ctx) };
    }
    if (isPlainObject(input) && isPlainObject(input.features)) {
      return this.infer(input.features, ctx);
    }
    return this.infer(input, ctx);
  }

  #model() {
    const model = requireObject(this.settings.model, "settings.model", configError);
    const kind = oneOf(
      model.kind,
      ["linear", "logistic", "provider"],
      "settings.model.kind",
      configError,
    );
    if (kind === "provider") {
      if (model.system !== undefined && typeof model.system !== "string") {
        throw configError("settings.model.system", "a string", model.system);
      }
      if (model.prompt !== undefined && typeof model.prompt !== "string") {
        throw configError("settings.model.prompt", "a prompt template string", model.prompt);
      }
      return model;
    }
    requireObject(model.weights, "settings.model.weights", configError);
    for (const name of Object.keys(model.weights)) {
      requireNumber(model.weights[name], `settings.model.weights.${name}`, configError);
    }
    requireNumber(model.bias ?? 0, "settings.model.bias", configError);
    if (model.threshold !== undefined) {
      requireNumber(model.threshold, "settings.model.threshold", configError);
    }
    if (model.labels !== undefined && (!Array.isArray(model.labels) || model.labels.length !== 2)) {
      throw configError("settings.model.labels", "two labels [negative, positive]", model.labels);
    }
    return { ...model, bias: model.bias ?? 0 };
  }

  #prompt(model, input) {
    if (typeof model.prompt === "string") return fillTemplate(model.prompt, input ?? {});
    if (typeof input === "string") return input;
    if (isPlainObject(input) && typeof input.prompt === "string") return input.prompt;
    if (input === undefined || input === null) {
      throw inputError(
        "input",
        "a prompt (a string, {prompt}, or values for settings.model.prompt)",
        input,
      );
    }
    return JSON.stringify(input);
  }
}

/**
 * Rules: `{id, priority, when: condition, then}`; the highest-priority match decides (mode
 * "first") or every match is listed (mode "all").
 */
export class BaseDecisionEngine extends BaseFunction {
  static defaults = { rules: [], mode: "first", default: null };

  #compiled = { source: null, rules: [] };

  /** `{decision, matched: [ids], trace: [{id, matched}]}`. */
  decide(facts) {
    requireObject(facts, "facts");
    const mode = oneOf(this.settings.mode, ["first", "all"], "settings.mode", configError);
    const matched = [];
    const decisions = [];
    const trace = [];
    for (const rule of this.#rules()) {
      const hit = rule.when(facts);
      trace.push({ id: rule.id, matched: hit });
      if (!hit) continue;
      matched.push(rule.id);
      decisions.push(cloneData(rule.then));
      if (mode === "first") break;
    }
    let decision;
    if (matched.length === 0) decision = cloneData(this.settings.default ?? null);
    else decision = mode === "first" ? decisions[0] : decisions;
    return { decision, matched, trace };
  }

  async execute(input) {
    return this.decide(input);
  }

  // Rules by priority (highest first), ties in the order written; each condition checked once.
  #rules() {
    const source = this.settings.rules;
    if (this.#compiled.source === source) return this.#compiled.rules;
    requireArray(source, "settings.rules", configError);
    const ids = new Set();
    const rules = source.map((rule, i) => {
      requireObject(rule, `settings.rules[${i}]`, configError);
      const id = rule.id === undefined
        ? `#${i}`
        : requireString(rule.id, `settings.rules[${i}].id`, configError);
      const at = `settings.rules[${i}] ("${id}")`;
      if (ids.has(id)) {
        throw new ConfigError(`${at}.id: two rules are called "${id}"`, {
          path: `settings.rules[${i}].id`,
        });
      }
      ids.add(id);
      const priority = rule.priority ?? 0;
      requireNumber(priority, `${at}.priority`, configError);
      if (rule.when === undefined) {
        throw new KlfInputError(`${at}.when: a rule needs a condition`, {
          path: `settings.rules[${i}].when`,
        });
      }
      return {
        id,
        priority,
        index: i,
        when: compileCondition(rule.when, `${at}.when`),
        then: rule.then ?? null,
      };
    });
    rules.sort((a, b) => b.priority - a.priority || a.index - b.index);
    this.#compiled = { source, rules };
    return rules;
  }
}

// Solves A x = b (Gaussian elimination, partial pivoting); null when A is singular.
function solveLinear(A, b) {
  const n = b.length;
  const m = A.map((row, i) => [...row, b[i]]);
  let scale = 0;
  for (const row of A) for (const v of row) scale = Math.max(scale, Math.abs(v));
  const tiny = 1e-12 * Math.max(1, scale);
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(m[r][col]) > Math.abs(m[pivot][col])) pivot = r;
    if (Math.abs(m[pivot][col]) <= tiny) return null;
    [m[col], m[pivot]] = [m[pivot], m[col]];
    for (let r = col + 1; r < n; r++) {
      const f = m[r][col] / m[col][col];
      if (f === 0) continue;
      for (let c = col; c <= n; c++) m[r][c] -= f * m[col][c];
    }
  }
  const x = new Array(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let sum = m[r][n];
    for (let c = r + 1; c < n; c++) sum -= m[r][c] * x[c];
    x[r] = sum / m[r][r];
  }
  return x;
}

/**
 * Online statistics persisted in ctx.kv (settings.stateKey): Welford mean and variance of y, and
 * least-squares regression of y on x (ridge settings.lambda) from the accumulated XᵀX and Xᵀy.
 * Needs the "kv" capability.
 */
export class BaseLearningEngine extends BaseFunction {
  static defaults = { stateKey: "learning-state", lambda: 0 };

  #lock = new KeyedLock();

  /** Adds samples `{x: number|number[], y}` (all or none); returns stats(). */
  async learn(samples, ctx) {
    ctx = ctxOf(this, ctx);
    requireArray(samples, "samples");
    return this.#lock.run("state", async () => {
      const state = await this.#load(ctx);
      let d = state.features;
      const rows = samples.map((sample, i) => {
        requireObject(sample, `samples[${i}]`);
        const x = this.#features(sample.x, `samples[${i}].x`);
        const y = requireNumber(sample.y, `samples[${i}].y`);
        d ??= x.length;
        if (x.length !== d) {
          throw new KlfInputError(
            `samples[${i}].x: expected ${d} feature${d === 1 ? "" : "s"} (${
              state.features === null ? "as the first sample has" : "as the model was trained with"
            }), got ${x.length}`,
            { path: `samples[${i}].x` },
          );
        }
        return { x, y };
      });
      if (rows.length === 0) return this.#stats(state);
      if (state.features === null) {
        state.features = d;
        state.xtx = Array.from({ length: d + 1 }, () => new Array(d + 1).fill(0));
        state.xty = new Array(d + 1).fill(0);
      }
      for (const { x, y } of rows) {
        state.count += 1;
        const delta = y - state.mean;
        state.mean += delta / state.count;
        state.m2 += delta * (y - state.mean);
        const z = [1, ...x];
        for (let i = 0; i <= d; i++) {
          state.xty[i] += z[i] * y;
          for (let j = 0; j <= d; j++) state.xtx[i][j] += z[i] * z[j];
        }
      }
      await ctx.kv.put(this.#key(), state);
      return this.#stats(state);
    });
  }

  /** The regression's prediction for x; Error when the data cannot determine the model yet. */
  async predict(x, ctx) {
    const state = await this.#load(ctxOf(this, ctx));
    if (state.features === null) {
      throw new Error("the model has not learned anything yet: call learn with samples first");
    }
    const features = this.#features(x, "x");
    if (features.length !== state.features) {
      throw new KlfInputError(
        `x: expected ${state.features} feature${
          state.features === 1 ? "" : "s"
        }, got ${features.length}`,
        { path: "x" },
      );
    }
    const fit = this.#fit(state);
    if (fit === null) {
      throw new Error(
        `not enough data to fit ${state.features} coefficient(s): ${state.count} sample(s) that do not pin the model down (need at least ${
          state.features + 1
        } independent ones, or settings.lambda > 0)`,
      );
    }
    return fit.intercept + fit.coefficients.reduce((sum, w, i) => sum + w * features[i], 0);
  }

  /** `{count, mean, variance (sample; null below 2), coefficients, intercept}` (null until fit). */
  async stats(ctx) {
    return this.#stats(await this.#load(ctxOf(this, ctx)));
  }

  async reset(ctx) {
    ctx = ctxOf(this, ctx);
    await this.#lock.run("state", () => ctx.kv.delete(this.#key()));
    return { reset: true };
  }

  /** `{op: "learn", samples}` | `{op: "predict", x}` → `{prediction}` | `{op: "stats"}` | `{op: "reset"}`. */
  async execute(input, ctx) {
    requireObject(input, "input");
    switch (oneOf(input.op, ["learn", "predict", "stats", "reset"], "input.op")) {
      case "learn":
        return this.learn(input.samples, ctx);
      case "predict":
        return { prediction: await this.predict(input.x, ctx) };
      case "stats":
        return this.stats(ctx);
      default:
        return this.reset(ctx);
    }
  }

  #key() {
    return requireString(this.settings.stateKey, "settings.stateKey", configError);
  }

  #features(x, path) {
    const list = typeof x === "number" ? [x] : requireArray(x, path);
    if (list.length === 0) throw inputError(path, "at least one feature", x);
    list.forEach((v, i) => requireNumber(v, Array.isArray(x) ? `${path}[${i}]` : path));
    return list;
  }

  async #load(ctx) {
    const key = this.#key();
    const state = await ctx.kv.get(key);
    if (state === undefined || state === null) {
      return { count: 0, mean: 0, m2: 0, features: null, xtx: null, xty: null };
    }
    const shaped = isPlainObject(state)
      && Number.isSafeInteger(state.count)
      && typeof state.mean === "number"
      && typeof state.m2 === "number"
      && (state.features === null
        || (Number.isSafeInteger(state.features) && Array.isArray(state.xtx)
          && state.xtx.length === state.features + 1 && Array.isArray(state.xty)));
    if (!shaped) {
      throw new Error(
        `kv key "${key}" does not hold a learning state: choose another settings.stateKey, or reset()`,
      );
    }
    return state;
  }

  #fit(state) {
    if (state.features === null) return null;
    const lambda = requireNumber(this.settings.lambda ?? 0, "settings.lambda", configError);
    if (lambda < 0) throw configError("settings.lambda", "a number ≥ 0", lambda);
    // The intercept is not penalised.
    const A = state.xtx.map((row, i) => row.map((v, j) => (i === j && i > 0 ? v + lambda : v)));
    const beta = solveLinear(A, state.xty);
    return beta === null ? null : { intercept: beta[0], coefficients: beta.slice(1) };
  }

  #stats(state) {
    const fit = this.#fit(state);
    return {
      count: state.count,
      mean: state.count === 0 ? null : state.mean,
      variance: state.count < 2 ? null : state.m2 / (state.count - 1),
      coefficients: fit === null ? null : fit.coefficients,
      intercept: fit === null ? null : fit.intercept,
    };
  }
}

function series(xs, path, min, what) {
  requireArray(xs, path);
  xs.forEach((x, i) => requireNumber(x, `${path}[${i}]`));
  if (xs.length < min) {
    throw new KlfInputError(
      `${path}: ${what} needs at least ${min} value${min === 1 ? "" : "s"}, got ${xs.length}`,
      { path },
    );
  }
  return xs;
}

const PREDICTOR_METHODS = ["sma", "ema", "trend", "forecast", "zscores", "anomalies"];

/** Time series: moving averages, linear trend, forecasts, z-scores and anomalies. */
export class BasePredictor extends BaseFunction {
  static defaults = {
    method: "trend",
    n: 3,
    alpha: null,
    steps: 1,
    forecastMethod: "linear",
    threshold: 3,
    window: null,
  };

  /** Simple moving average over full windows: `xs.length - n + 1` values. */
  sma(xs, n) {
    requireInteger(n, "n", 1);
    series(xs, "xs", n, `sma over ${n}`);
    const out = [];
    let sum = 0;
    for (let i = 0; i < xs.length; i++) {
      sum += xs[i];
      if (i >= n) sum -= xs[i - n];
      if (i >= n - 1) out.push(sum / n);
    }
    return out;
  }

  /**
   * Exponential moving average, one value per input, seeded with the first value. The second
   * argument is alpha (0 < alpha ≤ 1) or a span n ≥ 1 (alpha = 2 / (n + 1)).
   */
  ema(xs, alphaOrN) {
    const alpha = emaAlpha(alphaOrN);
    series(xs, "xs", 1, "ema");
    const out = [xs[0]];
    for (let i = 1; i < xs.length; i++) out.push(alpha * xs[i] + (1 - alpha) * out[i - 1]);
    return out;
  }

  /** Least-squares line through (i, xs[i]): `{slope, intercept, r2}`. */
  linearTrend(xs) {
    series(xs, "xs", 2, "a linear trend");
    const n = xs.length;
    const meanX = (n - 1) / 2;
    const meanY = xs.reduce((a, b) => a + b, 0) / n;
    let sxy = 0;
    let sxx = 0;
    for (let i = 0; i < n; i++) {
      sxy += (i - meanX) * (xs[i] - meanY);
      sxx += (i - meanX) * (i - meanX);
    }
    const slope = sxy / sxx;
    const intercept = meanY - slope * meanX;
    let ssRes = 0;
    let ssTot = 0;
    for (let i = 0; i < n; i++) {
      const fitted = intercept + slope * i;
      ssRes += (xs[i] - fitted) ** 2;
      ssTot += (xs[i] - meanY) ** 2;
    }
    return { slope, intercept, r2: ssTot === 0 ? 1 : 1 - ssRes / ssTot };
  }

  /** The next `steps` values: the trend line extended ("linear") or the last EMA held ("ema"). */
  forecast(xs, steps = 1, method = "linear", options = {}) {
    requireInteger(steps, "steps", 1);
    oneOf(method, ["linear", "ema"], "method");
    if (method === "linear") {
      const { slope, intercept } = this.linearTrend(xs);
      return Array.from({ length: steps }, (_, k) => intercept + slope * (xs.length + k));
    }
    const smoothed = this.ema(xs, options?.alpha ?? this.settings.alpha ?? this.settings.n);
    return new Array(steps).fill(smoothed.at(-1));
  }

  /** (x - mean) / stddev (population) for each value; all 0 when the series is constant. */
  zScores(xs) {
    series(xs, "xs", 1, "z-scores");
    const n = xs.length;
    const mean = xs.reduce((a, b) => a + b, 0) / n;
    const sd = Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / n);
    return xs.map((x) => (sd === 0 ? 0 : (x - mean) / sd));
  }

  /**
   * `[{index, value, z}]` where |z| > threshold: against the whole series, or (with `window`)
   * against the `window` values before each point. A point that differs from a constant window
   * has z = null (infinitely unusual).
   */
  anomalies(xs, options = {}) {
    const o = requireObject(options ?? {}, "options");
    const threshold = requireNumber(o.threshold ?? 3, "options.threshold");
    if (o.window === undefined || o.window === null) {
      return this.zScores(xs)
        .map((z, index) => ({ index, value: xs[index], z }))
        .filter((a) => Math.abs(a.z) > threshold);
    }
    const window = requireInteger(o.window, "options.window", 2);
    series(xs, "xs", window + 1, `anomalies over a window of ${window}`);
    const out = [];
    for (let i = window; i < xs.length; i++) {
      let mean = 0;
      for (let k = i - window; k < i; k++) mean += xs[k];
      mean /= window;
      let variance = 0;
      for (let k = i - window; k < i; k++) variance += (xs[k] - mean) ** 2;
      const sd = Math.sqrt(variance / window);
      if (sd === 0) {
        if (xs[i] !== mean) out.push({ index: i, value: xs[i], z: null });
      } else {
        const z = (xs[i] - mean) / sd;
        if (Math.abs(z) > threshold) out.push({ index: i, value: xs[i], z });
      }
    }
    return out;
  }

  /** `{series, method?, n?, alpha?, steps?, threshold?, window?}` → `{method, result}`. */
  async execute(input) {
    requireObject(input, "input");
    const s = this.settings;
    const method = oneOf(input.method ?? s.method, PREDICTOR_METHODS, "input.method");
    const xs = input.series;
    const pick = (key) => input[key] ?? s[key];
    try {
      return { method, result: this.#compute(method, xs, input, pick) };
    } catch (error) {
      // The methods name their argument xs; here it is input.series.
      if (
        error instanceof KlfInputError && typeof error.path === "string"
        && error.path.startsWith("xs")
      ) {
        const path = `input.series${error.path.slice(2)}`;
        throw new KlfInputError(`${path}${error.message.slice(error.path.length)}`, { path });
      }
      throw error;
    }
  }

  #compute(method, xs, input, pick) {
    const s = this.settings;
    let result;
    switch (method) {
      case "sma":
        result = this.sma(xs, pick("n"));
        break;
      case "ema":
        result = this.ema(xs, input.alpha ?? input.n ?? s.alpha ?? s.n);
        break;
      case "trend":
        result = this.linearTrend(xs);
        break;
      case "forecast":
        result = this.forecast(xs, pick("steps"), input.forecastMethod ?? s.forecastMethod, {
          alpha: input.alpha ?? input.n,
        });
        break;
      case "zscores":
        result = this.zScores(xs);
        break;
      default:
        result = this.anomalies(xs, { threshold: pick("threshold"), window: pick("window") });
    }
    return result;
  }
}

function emaAlpha(alphaOrN) {
  if (
    typeof alphaOrN !== "number" || !Number.isFinite(alphaOrN) || alphaOrN <= 0
    || (alphaOrN > 1 && !Number.isInteger(alphaOrN))
  ) {
    throw inputError(
      "alpha",
      "a smoothing factor 0 < alpha ≤ 1 or a span n ≥ 1 (an integer)",
      alphaOrN,
    );
  }
  return alphaOrN >= 1 ? 2 / (alphaOrN + 1) : alphaOrN;
}
