// ---- Workflow: BaseWorkflowEngine, BaseTaskScheduler, BaseProcessManager, BaseOrchestrator ----

function errorText(error) {
  if (error instanceof Error) {
    return error.name && error.name !== "Error"
      ? `${error.name}: ${error.message}`
      : error.message;
  }
  return typeof error === "string" ? error : show(error);
}

// References in a template: strings "$input…" and "$steps.<id>…" ("$$" escapes a literal "$").
function templateRefs(template, at, refs) {
  if (typeof template === "string") {
    if (!template.startsWith("$") || template.startsWith("$$")) return refs;
    const segments = parsePath(template.slice(1), at);
    if (segments[0] === "input") return refs;
    if (segments[0] === "steps" && typeof segments[1] === "string") {
      refs.push(segments[1]);
      return refs;
    }
    throw new KlfInputError(
      `${at}: ${
        JSON.stringify(template)
      } refers to nothing (references are "$input…" or "$steps.<id>…"; write "$$" for a literal "$")`,
      { path: at },
    );
  }
  if (Array.isArray(template)) {
    template.forEach((item, i) => templateRefs(item, `${at}[${i}]`, refs));
  } else if (isPlainObject(template)) {
    for (const key of Object.keys(template)) templateRefs(template[key], joinPath(at, key), refs);
  }
  return refs;
}

function resolveTemplate(template, scope) {
  if (typeof template === "string") {
    if (template.startsWith("$$")) return template.slice(1);
    if (template.startsWith("$")) return cloneData(getPath(scope, template.slice(1)));
    return template;
  }
  if (Array.isArray(template)) return template.map((item) => resolveTemplate(item, scope));
  if (isPlainObject(template)) {
    const out = {};
    for (const key of Object.keys(template)) {
      const value = resolveTemplate(template[key], scope);
      if (value !== undefined) out[key] = value;
    }
    return out;
  }
  return template;
}

/**
 * A DAG of steps over functions (`call`) and methods (`method`), with inputs from templates; each
 * wave of ready steps runs concurrently.
 */
export class BaseWorkflowEngine extends BaseFunction {
  static defaults = { steps: [], output: null };

  /**
   * `{output, steps: {id: {status: "ok"|"failed"|"skipped", output?|error, ms}}}`; a failed step
   * that is not optional throws WorkflowError (with `.steps`) once the running wave settles.
   */
  async run(input, steps, ctx) {
    ctx = ctxOf(this, ctx);
    const plan = this.plan(
      steps ?? this.settings.steps,
      steps === undefined ? "settings.steps" : "steps",
    );
    const scope = { input: input ?? null, steps: {} };
    const trace = {};
    const done = new Set();
    let failure = null;
    let pending = plan.slice();
    while (pending.length > 0 && failure === null) {
      const ready = pending.filter((step) => step.deps.every((dep) => done.has(dep)));
      if (ready.length === 0) break;
      pending = pending.filter((step) => !ready.includes(step));
      await Promise.all(
        ready.map(async (step) => {
          const started = ctx.now();
          try {
            if (step.when !== null && !step.when(scope)) {
              trace[step.id] = { status: "skipped", reason: "its condition is false", ms: 0 };
              scope.steps[step.id] = { status: "skipped" };
            } else {
              const stepInput = resolveTemplate(step.input, scope);
              const output = step.call !== undefined
                ? await ctx.call(step.call, stepInput)
                : await this[step.method](stepInput, scope, ctx);
              trace[step.id] = { status: "ok", output: output ?? null, ms: ctx.now() - started };
              scope.steps[step.id] = { status: "ok", output: output ?? null };
            }
          } catch (error) {
            trace[step.id] = { status: "failed", error: errorText(error), ms: ctx.now() - started };
            scope.steps[step.id] = { status: "failed", error: errorText(error) };
            if (!step.optional && failure === null) failure = { id: step.id, error };
          }
          done.add(step.id);
        }),
      );
    }
    for (const step of pending) {
      trace[step.id] = {
        status: "skipped",
        reason: failure === null ? "not reached" : `step "${failure.id}" failed`,
        ms: 0,
      };
    }
    // The trace in declaration order.
    const ordered = {};
    for (const step of plan) ordered[step.id] = trace[step.id];
    if (failure !== null) {
      const skipped = pending.map((step) => step.id);
      throw new WorkflowError(
        `workflow failed at step "${failure.id}": ${errorText(failure.error)}${
          skipped.length > 0 ? ` (not run: ${skipped.join(", ")})` : ""
        }`,
        ordered,
      );
    }
    const template = this.settings.output;
    const output = template !== null && template !== undefined
      ? resolveTemplate(template, scope)
      : (scope.steps[plan.at(-1)?.id]?.output ?? null);
    return { output: output ?? null, steps: ordered };
  }

  /**
   * The checked steps: ids unique, dependencies (from `after` and from "$steps.<id>" references)
   * known, no cycle, each step a `call` or a `method` of the class. Throws KlfInputError naming them.
   */
  plan(steps, label = "steps") {
    requireArray(steps, label);
    const ids = new Map();
    const plan = steps.map((step, i) => {
      const at = `${label}[${i}]`;
      requireObject(step, at);
      const id = requireString(step.id, `${at}.id`);
      if (ids.has(id)) {
        throw new KlfInputError(`${at}.id: "${id}" is also the id of ${label}[${ids.get(id)}]`, {
          path: `${at}.id`,
        });
      }
      ids.set(id, i);
      const hasCall = step.call !== undefined;
      if (hasCall === (step.method !== undefined)) {
        throw new KlfInputError(
          `${at}: a step has either "call" (a function) or "method" (a method of the class)`,
          { path: at },
        );
      }
      if (hasCall) requireString(step.call, `${at}.call`);
      else if (typeof this[requireString(step.method, `${at}.method`)] !== "function") {
        throw new KlfInputError(
          `${at}.method: the class has no method ${JSON.stringify(step.method)}`,
          { path: `${at}.method` },
        );
      }
      const after = step.after === undefined
        ? []
        : typeof step.after === "string"
        ? [step.after]
        : requireArray(step.after, `${at}.after`);
      after.forEach((dep, j) => requireString(dep, `${at}.after[${j}]`));
      const refs = templateRefs(step.input ?? "$input", `${at}.input`, []);
      return {
        id,
        at,
        call: hasCall ? step.call : undefined,
        method: hasCall ? undefined : step.method,
        input: step.input === undefined ? "$input" : step.input,
        optional: step.optional === true,
        when: step.when === undefined ? null : compileCondition(step.when, `${at}.when`),
        deps: [...new Set([...after, ...refs])],
      };
    });
    for (const step of plan) {
      for (const dep of step.deps) {
        if (!ids.has(dep)) {
          throw new KlfInputError(
            `${step.at}: depends on an unknown step "${dep}" (steps: ${
              [...ids.keys()].join(", ")
            })`,
            { path: step.at },
          );
        }
        if (dep === step.id) {
          throw new KlfInputError(`${step.at}: step "${dep}" depends on itself`, { path: step.at });
        }
      }
    }
    const cycle = findCycle(plan);
    if (cycle !== null) {
      throw new KlfInputError(
        `${label}: the steps form a cycle: ${cycle.join(" → ")} (each waits for the next)`,
        { path: label },
      );
    }
    return plan;
  }

  async execute(input, ctx) {
    return this.run(input, undefined, ctx);
  }
}

// A dependency cycle as a list of ids (first repeated at the end), or null.
function findCycle(plan) {
  const byId = new Map(plan.map((step) => [step.id, step]));
  const state = new Map(); // 1: on the stack, 2: done
  const stack = [];
  const visit = (id) => {
    state.set(id, 1);
    stack.push(id);
    for (const dep of byId.get(id).deps) {
      if (state.get(dep) === 1) return [...stack.slice(stack.indexOf(dep)), dep];
      if (state.get(dep) === undefined) {
        const found = visit(dep);
        if (found !== null) return found;
      }
    }
    stack.pop();
    state.set(id, 2);
    return null;
  };
  for (const step of plan) {
    if (state.get(step.id) === undefined) {
      const found = visit(step.id);
      if (found !== null) return found;
    }
  }
  return null;
}

const DAY_MS = 86400000;

/**
 * Deferred and periodic calls through ctx.schedule (capability "schedule"), and `nextRun` for
 * cron-lite specs computed here.
 */
export class BaseTaskScheduler extends BaseFunction {
  static defaults = { target: null, minIntervalMs: 100 };

  /** Calls `target` with `input` once, `ms` from now; returns the schedule id. */
  scheduleAfter(ms, target, input, ctx) {
    requireInteger(ms, "ms", 0);
    return ctxOf(this, ctx).schedule.after(ms, this.#target(target), input ?? null);
  }

  /** Calls `target` with `input` every `ms` (≥ settings.minIntervalMs); returns the schedule id. */
  scheduleEvery(ms, target, input, ctx) {
    const min = requireInteger(
      this.settings.minIntervalMs,
      "settings.minIntervalMs",
      1,
      configError,
    );
    requireInteger(ms, "ms", min);
    return ctxOf(this, ctx).schedule.every(ms, this.#target(target), input ?? null);
  }

  /** Schedules one call at the spec's next run after now; returns `{id, at}`. */
  scheduleNext(spec, target, input, ctx) {
    ctx = ctxOf(this, ctx);
    const now = ctx.now();
    const at = this.nextRun(spec, now);
    return { id: this.scheduleAfter(Math.max(0, at - now), target, input, ctx), at };
  }

  /** True when a schedule with this id existed and is now cancelled. */
  cancel(id, ctx) {
    if (typeof id !== "string" && !Number.isFinite(id)) throw inputError("id", "a schedule id", id);
    return ctxOf(this, ctx).schedule.cancel(id);
  }

  /** `[{id, target, kind, intervalMs, nextAt, runs}]`. */
  list(ctx) {
    return ctxOf(this, ctx).schedule.list();
  }

  /**
   * The first run strictly after `fromMs`: `{everyMs}` runs on multiples of everyMs since the
   * epoch (so every 3600000 is on the hour), `{at: "HH:MM" | ["HH:MM", …]}` daily at those UTC times.
   */
  nextRun(spec, fromMs) {
    requireObject(spec, "spec");
    requireNumber(fromMs, "fromMs");
    const keys = Object.keys(spec);
    if (keys.length !== 1 || !["everyMs", "at"].includes(keys[0])) {
      throw new KlfInputError(
        `spec: expected {everyMs} or {at: "HH:MM"}, got keys ${keys.join(", ") || "none"}`,
        { path: "spec" },
      );
    }
    if (keys[0] === "everyMs") {
      const every = requireInteger(spec.everyMs, "spec.everyMs", 1);
      return (Math.floor(fromMs / every) + 1) * every;
    }
    const times = (Array.isArray(spec.at) ? spec.at : [spec.at]).map((text, i) => {
      const where = Array.isArray(spec.at) ? `spec.at[${i}]` : "spec.at";
      const m = typeof text === "string" ? /^([01]\d|2[0-3]):([0-5]\d)$/.exec(text) : null;
      if (m === null) throw inputError(where, 'a UTC time "HH:MM" (00:00 to 23:59)', text);
      return (Number(m[1]) * 60 + Number(m[2])) * 60000;
    });
    if (times.length === 0) throw inputError("spec.at", "at least one time", spec.at);
    const day = Math.floor(fromMs / DAY_MS) * DAY_MS;
    let best = Infinity;
    for (const offset of times) {
      const today = day + offset;
      const candidate = today > fromMs ? today : today + DAY_MS;
      if (candidate < best) best = candidate;
    }
    return best;
  }

  /**
   * `{op: "after", ms, target?, input}` / `{op: "every", ms, target?, input}` → `{id}`;
   * `{op: "next", spec, target?, input}` → `{id, at}`; `{op: "cancel", id}` → `{cancelled}`;
   * `{op: "list"}` → `{schedules}`; `{op: "nextRun", spec, from?}` → `{at}`.
   */
  async execute(input, ctx) {
    requireObject(input, "input");
    switch (oneOf(input.op, ["after", "every", "next", "cancel", "list", "nextRun"], "input.op")) {
      case "after":
        return { id: this.scheduleAfter(input.ms, input.target, input.input, ctx) };
      case "every":
        return { id: this.scheduleEvery(input.ms, input.target, input.input, ctx) };
      case "next":
        return this.scheduleNext(input.spec, input.target, input.input, ctx);
      case "cancel":
        return { cancelled: this.cancel(input.id, ctx) };
      case "list":
        return { schedules: this.list(ctx) };
      default:
        return { at: this.nextRun(input.spec, input.from ?? ctxOf(this, ctx).now()) };
    }
  }

  #target(target) {
    const chosen = target ?? this.settings.target;
    if (typeof chosen !== "string" || chosen === "") {
      throw target === undefined || target === null
        ? configError("settings.target", "the function to call (or pass target)", chosen)
        : inputError("target", "a function name", target);
    }
    return chosen;
  }
}

// The job lifecycle used when settings.transitions is null. Not a default to merge into: a machine
// of one's own would otherwise inherit these states.
const JOB_TRANSITIONS = {
  created: { start: "running", cancel: "cancelled" },
  running: { pause: "paused", complete: "completed", fail: "failed", cancel: "cancelled" },
  paused: { resume: "running", cancel: "cancelled" },
};

/**
 * Long-running processes (jobs) as state machines persisted in ctx.kv (`<keyPrefix><id>`), with
 * a history of transitions. Needs the "kv" capability.
 */
export class BaseProcessManager extends BaseFunction {
  static defaults = {
    states: null,
    transitions: null,
    initial: "created",
    terminal: ["completed", "failed", "cancelled"],
    keyPrefix: "process/",
    historyLimit: 100,
  };

  #locks = new KeyedLock();
  #checked = null;

  /** Creates process `id` in the initial state; ConflictError if it exists. */
  async start(id, data = {}, ctx) {
    ctx = ctxOf(this, ctx);
    const machine = this.#machine();
    const key = this.#key(id);
    return this.#locks.run(key, async () => {
      const existing = await ctx.kv.get(key);
      if (existing !== undefined) {
        throw new ConflictError(`process "${id}" already exists (state ${existing.state})`);
      }
      const at = isoTime(ctx.now());
      const process = {
        id: String(id),
        state: machine.initial,
        data: cloneData(requireObject(data ?? {}, "data")),
        history: [],
        createdAt: at,
        updatedAt: at,
      };
      await ctx.kv.put(key, process);
      return process;
    });
  }

  /**
   * Applies `event`: the state moves along settings.transitions, `data` is merged into the
   * process's data, the history grows. An event the state does not allow → KlfInputError naming
   * the allowed ones. `onTransition(process, {from, to, event})` may veto by throwing.
   */
  async send(id, event, data, ctx) {
    ctx = ctxOf(this, ctx);
    const machine = this.#machine();
    const key = this.#key(id);
    requireString(event, "event");
    if (data !== undefined && data !== null) requireObject(data, "data");
    return this.#locks.run(key, async () => {
      const process = await ctx.kv.get(key);
      if (process === undefined) throw new NotFoundError(`id: no process "${id}"`, { path: "id" });
      const allowed = Object.keys(machine.transitions[process.state] ?? {});
      if (!allowed.includes(event)) {
        const why = machine.terminal.includes(process.state)
          ? `it is ${process.state}, a final state`
          : `allowed: ${allowed.join(", ") || "none"}`;
        throw new KlfInputError(
          `event: process "${id}" in state ${process.state} cannot take "${event}" (${why})`,
          { path: "event" },
        );
      }
      const to = machine.transitions[process.state][event];
      const at = isoTime(ctx.now());
      const next = {
        ...process,
        state: to,
        data: { ...process.data, ...cloneData(data ?? {}) },
        updatedAt: at,
      };
      next.history = [...process.history, { from: process.state, to, event, at }].slice(
        -requireInteger(this.settings.historyLimit, "settings.historyLimit", 1, configError),
      );
      await this.onTransition(next, { from: process.state, to, event });
      await ctx.kv.put(key, next);
      return next;
    });
  }

  /** The process, or null. */
  async status(id, ctx) {
    return (await ctxOf(this, ctx).kv.get(this.#key(id))) ?? null;
  }

  /** `[{id, state, updatedAt}]` in id order, optionally only those in `state`. */
  async list(options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    const prefix = this.#prefix();
    const out = [];
    for (const key of (await ctx.kv.list(prefix)).sort()) {
      const process = await ctx.kv.get(key);
      if (process === undefined) continue;
      if (options?.state !== undefined && process.state !== options.state) continue;
      out.push({ id: process.id, state: process.state, updatedAt: process.updatedAt });
    }
    return out;
  }

  /** Called before a transition is stored; throw to refuse it. */
  async onTransition(process, transition) {}

  /** `{op: "start"|"send"|"status"|"list", id?, event?, data?, state?}`. */
  async execute(input, ctx) {
    requireObject(input, "input");
    switch (oneOf(input.op, ["start", "send", "status", "list"], "input.op")) {
      case "start":
        return this.start(input.id, input.data, ctx);
      case "send":
        return this.send(input.id, input.event, input.data, ctx);
      case "status":
        return { process: await this.status(input.id, ctx) };
      default:
        return { processes: await this.list({ state: input.state }, ctx) };
    }
  }

  #prefix() {
    const prefix = this.settings.keyPrefix;
    if (typeof prefix !== "string") throw configError("settings.keyPrefix", "a string", prefix);
    return prefix;
  }

  #key(id) {
    if (typeof id === "number" && Number.isFinite(id)) return `${this.#prefix()}${id}`;
    return `${this.#prefix()}${requireString(id, "id")}`;
  }

  // The state machine, checked once: every state named is declared, the initial one included.
  #machine() {
    const s = this.settings;
    if (
      this.#checked !== null && this.#checked.transitions === s.transitions
      && this.#checked.states === s.states
    ) return this.#checked;
    const transitions = requireObject(
      s.transitions ?? JOB_TRANSITIONS,
      "settings.transitions",
      configError,
    );
    const initial = requireString(s.initial, "settings.initial", configError);
    const terminal = requireArray(s.terminal ?? [], "settings.terminal", configError);
    let states = s.states;
    if (states === null || states === undefined) {
      states = new Set([initial, ...terminal]);
      for (const from of Object.keys(transitions)) {
        states.add(from);
        for (const to of Object.values(transitions[from] ?? {})) states.add(to);
      }
      states = [...states];
    }
    requireArray(states, "settings.states", configError);
    const known = (state, path) => {
      if (!states.includes(state)) {
        throw new ConfigError(
          `${path}: ${show(state)} is not one of settings.states (${states.join(", ")})`,
          { path },
        );
      }
    };
    known(initial, "settings.initial");
    terminal.forEach((state, i) => known(state, `settings.terminal[${i}]`));
    for (const from of Object.keys(transitions)) {
      known(from, `settings.transitions.${from}`);
      const events = requireObject(transitions[from], `settings.transitions.${from}`, configError);
      for (const event of Object.keys(events)) {
        known(events[event], `settings.transitions.${from}.${event}`);
      }
      if (terminal.includes(from) && Object.keys(events).length > 0) {
        throw new ConfigError(
          `settings.transitions.${from}: ${from} is terminal, so it has no transitions`,
          { path: `settings.transitions.${from}` },
        );
      }
    }
    for (const state of states) {
      if (!terminal.includes(state) && Object.keys(transitions[state] ?? {}).length === 0) {
        throw new ConfigError(
          `settings.transitions: state "${state}" has no transitions and is not in settings.terminal (a process there would be stuck)`,
          { path: "settings.transitions" },
        );
      }
    }
    this.#checked = { transitions, states: s.states, initial, terminal };
    return this.#checked;
  }
}

const REDUCE_OPS = ["sum", "avg", "min", "max", "concat", "merge", "count"];

/** Fan-out/fan-in over functions (or methods): bounded concurrency, per-item results. */
export class BaseOrchestrator extends BaseFunction {
  static defaults = { target: null, concurrency: 8, failFast: false };

  /**
   * Calls `target` (a function name, or `{method}` of the class) once per input, at most
   * `concurrency` at a time: `[{index, ok, result|error}]` in input order. With failFast, no new
   * call starts after a failure; the rest are `{ok: false, skipped: true}`.
   */
  async fanOut(target, inputs, options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    requireArray(inputs, "inputs");
    const invoke = this.#invoker(target, "target", ctx);
    return this.#pool(inputs.length, (index) => invoke(inputs[index], index), options);
  }

  /**
   * Combines results (fanOut's, whose ok ones count, or plain values) with a reducer: a method
   * name, or `{op: "sum"|"avg"|"min"|"max"|"concat"|"merge"|"count", field?}`.
   */
  fanIn(results, reducer) {
    requireArray(results, "results");
    const values = results
      .filter((r) =>
        !(isPlainObject(r) && typeof r.ok === "boolean" && Number.isInteger(r.index) && !r.ok)
      )
      .map((r) => (isPlainObject(r) && r.ok === true && Number.isInteger(r.index) ? r.result : r));
    if (typeof reducer === "string" && typeof this[reducer] === "function") {
      return this[reducer](values);
    }
    const spec = typeof reducer === "string" ? { op: reducer } : requireObject(reducer, "reducer");
    const op = oneOf(spec.op, REDUCE_OPS, "reducer.op");
    if (spec.field !== undefined) parsePath(spec.field, "reducer.field");
    const picked = spec.field === undefined ? values : values.map((v) => getPath(v, spec.field));
    switch (op) {
      case "count":
        return picked.filter((v) => v !== undefined && v !== null).length;
      case "concat":
        return picked.flatMap((v, i) => {
          if (v === undefined || v === null) return [];
          return Array.isArray(v) ? v : [v];
        });
      case "merge":
        return picked.reduce((acc, v, i) => {
          if (v === undefined || v === null) return acc;
          return {
            ...acc,
            ...requireObject(v, `results[${i}]${spec.field === undefined ? "" : `.${spec.field}`}`),
          };
        }, {});
      default: {
        const numbers = picked.map((v, i) =>
          requireNumber(v, `results[${i}]${spec.field === undefined ? "" : `.${spec.field}`}`)
        );
        return aggregate(op, numbers);
      }
    }
  }

  /** The same input to several targets, concurrently: `[{target, ok, result|error}]`. */
  async scatterGather(targets, input, options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    requireArray(targets, "targets");
    if (targets.length === 0) throw inputError("targets", "at least one target", targets);
    const invokers = targets.map((target, i) => this.#invoker(target, `targets[${i}]`, ctx));
    const results = await this.#pool(targets.length, (i) => invokers[i](input, i), options);
    return results.map(({ index, ...rest }) => ({
      target: typeof targets[index] === "string" ? targets[index] : targets[index].method,
      ...rest,
    }));
  }

  /**
   * `{target?, inputs, reduce?, concurrency?, failFast?}` → `{results, value?}`;
   * `{targets, input}` → `{results}` (scatter-gather).
   */
  async execute(input, ctx) {
    requireObject(input, "input");
    const options = { concurrency: input.concurrency, failFast: input.failFast };
    if (input.targets !== undefined) {
      return { results: await this.scatterGather(input.targets, input.input, options, ctx) };
    }
    const results = await this.fanOut(
      input.target ?? this.settings.target,
      input.inputs,
      options,
      ctx,
    );
    if (input.reduce === undefined) return { results };
    return { results, value: this.fanIn(results, input.reduce) };
  }

  // Runs task(0..count-1), at most `concurrency` at a time, collecting per-index outcomes.
  async #pool(count, task, options) {
    const o = requireObject(options ?? {}, "options");
    const concurrency = requireInteger(
      o.concurrency ?? this.settings.concurrency,
      "options.concurrency",
      1,
    );
    const failFast = (o.failFast ?? this.settings.failFast) === true;
    const results = new Array(count);
    let next = 0;
    let failed = false;
    const worker = async () => {
      while (next < count) {
        const index = next++;
        if (failed && failFast) {
          results[index] = {
            index,
            ok: false,
            skipped: true,
            error: "not started: an earlier call failed (failFast)",
          };
          continue;
        }
        try {
          results[index] = { index, ok: true, result: (await task(index)) ?? null };
        } catch (error) {
          failed = true;
          results[index] = { index, ok: false, error: errorText(error) };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
    return results;
  }

  #invoker(target, path, ctx) {
    if (typeof target === "string" && target !== "") return (input) => ctx.call(target, input);
    if (isPlainObject(target) && typeof target.method === "string") {
      if (typeof this[target.method] !== "function") {
        throw new KlfInputError(
          `${path}.method: the class has no method ${JSON.stringify(target.method)}`,
          { path: `${path}.method` },
        );
      }
      return (input, index) => this[target.method](input, index, ctx);
    }
    if (target === null || target === undefined) {
      throw configError("settings.target", "the function to call (or pass target)", target);
    }
    throw inputError(path, 'a function name or {method: "name"}', target);
  }
}
