// ---- Data: BaseDataStore, BaseDataProcessor, BaseDataValidator, BaseDataTransformer -----------

const STAMPS = ["_version", "_createdAt", "_updatedAt"];

/**
 * Records of one collection in the function's kv namespace (`<collection>/<id>`), validated
 * against settings.schema, versioned for optimistic concurrency. Needs the "kv" capability.
 */
export class BaseDataStore extends BaseFunction {
  static defaults = { collection: "records", key: "id", schema: null };

  #locks = new KeyedLock();

  /**
   * Stores `record` (a copy, stamped with `_version`, `_createdAt`, `_updatedAt`) and returns it.
   * `options.expectedVersion` (or the record's own `_version`) must match the stored version
   * (0: must not exist yet), else ConflictError.
   */
  async put(record, options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    requireObject(record, "record");
    requireObject(options ?? {}, "options");
    const id = this.#id(record[this.#keyName()], `record.${this.#keyName()}`);
    const plain = {};
    for (const key of Object.keys(record)) if (!STAMPS.includes(key)) plain[key] = record[key];
    if (this.settings.schema !== null && this.settings.schema !== undefined) {
      const result = validateSchema(plain, this.settings.schema, {
        root: "record",
        schemaPath: "settings.schema",
      });
      if (!result.valid) {
        throw new KlfInputError(`invalid record: ${summarizeErrors(result.errors)}`, {
          path: result.errors[0].path,
          errors: result.errors,
        });
      }
    }
    const expected = options?.expectedVersion ?? record._version;
    if (expected !== undefined) {
      requireInteger(
        expected,
        options?.expectedVersion !== undefined ? "options.expectedVersion" : "record._version",
        0,
      );
    }
    const key = this.#kvKey(id);
    return this.#locks.run(key, async () => {
      const current = await ctx.kv.get(key);
      const version = current?._version ?? 0;
      if (expected !== undefined && expected !== version) {
        throw new ConflictError(
          `${this.settings.collection}/${id}: expected version ${expected}, but the stored version is ${version}${
            version === 0 ? " (no such record)" : ""
          }`,
          { expectedVersion: expected, actualVersion: version },
        );
      }
      const now = isoTime(ctx.now());
      const stored = {
        ...cloneData(plain),
        _version: version + 1,
        _createdAt: current?._createdAt ?? now,
        _updatedAt: now,
      };
      await ctx.kv.put(key, stored);
      return stored;
    });
  }

  /** The record with this id, or null. */
  async get(id, ctx) {
    ctx = ctxOf(this, ctx);
    return (await ctx.kv.get(this.#kvKey(this.#id(id, "id")))) ?? null;
  }

  /** Deletes the record; true when it existed. `options.expectedVersion` as in put. */
  async delete(id, options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    const key = this.#kvKey(this.#id(id, "id"));
    const expected = options?.expectedVersion;
    if (expected !== undefined) requireInteger(expected, "options.expectedVersion", 0);
    return this.#locks.run(key, async () => {
      const current = await ctx.kv.get(key);
      const version = current?._version ?? 0;
      if (expected !== undefined && expected !== version) {
        throw new ConflictError(
          `${this.settings.collection}/${id}: expected version ${expected}, but the stored version is ${version}`,
          { expectedVersion: expected, actualVersion: version },
        );
      }
      if (current === undefined) return false;
      await ctx.kv.delete(key);
      return true;
    });
  }

  /** Records whose id starts with `prefix`, in id order, at most `limit` (default 100). */
  async list(options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    requireObject(options ?? {}, "options");
    const prefix = options?.prefix ?? "";
    if (typeof prefix !== "string") throw inputError("options.prefix", "a string", prefix);
    const limit = options?.limit ?? 100;
    requireInteger(limit, "options.limit", 0);
    const keys = (await ctx.kv.list(this.#kvKey(prefix))).sort().slice(0, limit);
    const records = [];
    for (const key of keys) {
      const record = await ctx.kv.get(key);
      if (record !== undefined) records.push(record);
    }
    return records;
  }

  /** Records matching the condition `filter` (a full scan of the collection), at most `limit`. */
  async query(filter, options = {}, ctx) {
    ctx = ctxOf(this, ctx);
    const predicate = compileCondition(filter ?? true, "filter");
    const limit = options?.limit ?? Infinity;
    if (limit !== Infinity) requireInteger(limit, "options.limit", 0);
    const out = [];
    for (const key of (await ctx.kv.list(this.#kvKey(""))).sort()) {
      if (out.length >= limit) break;
      const record = await ctx.kv.get(key);
      if (record !== undefined && predicate(record)) out.push(record);
    }
    return out;
  }

  /**
   * `{op: "put", record, expectedVersion?}` → `{record}`; `{op: "get", id}` → `{record|null}`;
   * `{op: "delete", id, expectedVersion?}` → `{deleted}`; `{op: "list", prefix?, limit?}` and
   * `{op: "query", filter, limit?}` → `{records}`.
   */
  async execute(input, ctx) {
    requireObject(input, "input");
    switch (oneOf(input.op, ["put", "get", "delete", "list", "query"], "input.op")) {
      case "put":
        return {
          record: await this.put(input.record, { expectedVersion: input.expectedVersion }, ctx),
        };
      case "get":
        return { record: await this.get(input.id, ctx) };
      case "delete":
        return {
          deleted: await this.delete(input.id, { expectedVersion: input.expectedVersion }, ctx),
        };
      case "list":
        return { records: await this.list({ prefix: input.prefix, limit: input.limit }, ctx) };
      default:
        return { records: await this.query(input.filter, { limit: input.limit }, ctx) };
    }
  }

  #keyName() {
    return requireString(this.settings.key, "settings.key", configError);
  }

  #id(id, path) {
    if (typeof id === "number" && Number.isFinite(id)) return String(id);
    if (typeof id !== "string" || id === "") {
      throw inputError(path, "a record id (a non-empty string or a number)", id);
    }
    return id;
  }

  #kvKey(id) {
    return `${requireString(this.settings.collection, "settings.collection", configError)}/${id}`;
  }
}

const STEP_KINDS = ["filter", "select", "compute", "sort", "window", "groupBy", "limit", "dedupe"];
const EXPRESSION_OPS = ["add", "sub", "mul", "div", "pct_change", "abs", "round", "min", "max"];
const WINDOW_OPS = ["avg", "sum", "min", "max"];
const AGGREGATE_OPS = ["count", "sum", "avg", "min", "max", "first", "last", "stddev"];

// A record's numeric field, or KlfInputError naming the step and the record.
function numericField(record, field, index, where) {
  const value = getPath(record, field);
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new KlfInputError(
      `${where}: records[${index}].${field} is ${show(value)}, expected a number`,
      { path: `records[${index}].${field}` },
    );
  }
  return value;
}

function fieldList(value, path) {
  const list = typeof value === "string" ? [value] : requireArray(value, path);
  list.forEach((field, i) => parsePath(field, `${path}[${i}]`));
  return list;
}

/**
 * Declarative pipelines over arrays of records: filter, select, compute, sort, window, groupBy,
 * limit, dedupe (settings.steps, or steps passed to run).
 */
export class BaseDataProcessor extends BaseFunction {
  static defaults = { steps: [] };

  /** The records after every step, in order; the input is not modified. */
  run(records, steps) {
    requireRecords(records, "records");
    const list = steps ?? this.settings.steps;
    const label = steps === undefined ? "settings.steps" : "steps";
    requireArray(list, label);
    let current = records;
    list.forEach((step, i) => {
      current = this.runStep(step, current, `${label}[${i}]`);
    });
    return current;
  }

  /** One step; a subclass may override it to add step kinds, calling super for the rest. */
  runStep(step, records, where) {
    requireObject(step, where);
    const keys = Object.keys(step);
    if (keys.length !== 1 || !STEP_KINDS.includes(keys[0])) {
      throw new KlfInputError(
        `${where}: unknown step ${
          keys.length === 1 ? JSON.stringify(keys[0]) : `with keys ${keys.join(", ") || "none"}`
        } (a step is one of ${STEP_KINDS.map((k) => `{${k}}`).join(", ")})`,
        { path: where },
      );
    }
    const kind = keys[0];
    const arg = step[kind];
    const at = `${where}.${kind}`;
    switch (kind) {
      case "filter": {
        const predicate = compileCondition(arg, at);
        return records.filter((record) => predicate(record));
      }
      case "select": {
        const fields = fieldList(arg, at);
        return records.map((record) => {
          const out = {};
          for (const field of fields) {
            const value = getPath(record, field);
            if (value !== undefined) setPath(out, field, value);
          }
          return out;
        });
      }
      case "compute":
        return computeStep(records, requireObject(arg, at), at);
      case "sort": {
        requireObject(arg, at);
        const by = fieldList(arg.by, `${at}.by`);
        const sign = oneOf(arg.order ?? "asc", ["asc", "desc"], `${at}.order`) === "desc" ? -1 : 1;
        return records
          .map((record, index) => ({ record, index }))
          .sort((a, b) => {
            for (const field of by) {
              const x = getPath(a.record, field);
              const y = getPath(b.record, field);
              const missing = (x === undefined || x === null) - (y === undefined || y === null);
              if (missing !== 0) return missing; // missing last, in both orders
              const c = compareValues(x, y);
              if (c !== 0) return sign * c;
            }
            return a.index - b.index;
          })
          .map(({ record }) => record);
      }
      case "window":
        return windowStep(records, requireObject(arg, at), at);
      case "groupBy":
        return groupByStep(records, requireObject(arg, at), at);
      case "limit":
        return records.slice(0, requireInteger(arg, at, 0));
      default: {
        const fields = fieldList(arg, at);
        const seen = new Set();
        return records.filter((record) => {
          const key = canonical(
            fields.length === 0 ? record : fields.map((f) => getPath(record, f) ?? null),
          );
          if (seen.has(key)) return false;
          seen.add(key);
          return true;
        });
      }
    }
  }

  /** An array of records, or `{records, steps?}` → `{records}`. */
  async execute(input) {
    if (Array.isArray(input)) return { records: this.run(input) };
    requireObject(input, "input");
    return { records: this.run(input.records, input.steps) };
  }
}

function computeStep(records, spec, at) {
  const fields = Object.keys(spec);
  const expressions = fields.map((field) => {
    parsePath(field, at);
    return compileExpression(spec[field], `${at}.${field}`);
  });
  const previous = new Array(fields.length).fill(null);
  // Every field is computed from the record as it entered the step (object keys have no
  // dependable order once config has been through TOML and JSON); a later step sees them all.
  return records.map((record, index) => {
    const values = fields.map((field, k) => {
      const state = { previous: previous[k], index };
      const value = expressions[k](record, state);
      previous[k] = state.current ?? null;
      return value;
    });
    const out = cloneData(record);
    fields.forEach((field, k) => setPath(out, field, values[k]));
    return out;
  });
}

// An expression `{op, args: [field | number | expression]}` as a function of the record.
function compileExpression(expression, at, nested = false) {
  requireObject(expression, at);
  const op = oneOf(expression.op, EXPRESSION_OPS, `${at}.op`);
  if (
    nested && op === "pct_change" && Array.isArray(expression.args) && expression.args.length === 1
  ) {
    throw new KlfInputError(
      `${at}: pct_change against the previous record must be a whole expression, not an argument`,
      { path: at },
    );
  }
  const args = requireArray(expression.args ?? [], `${at}.args`);
  const arity =
    {
      add: [2, Infinity],
      mul: [2, Infinity],
      min: [1, Infinity],
      max: [1, Infinity],
      sub: [2, 2],
      div: [2, 2],
      pct_change: [1, 2],
      abs: [1, 1],
      round: [1, 2],
    }[op];
  if (args.length < arity[0] || args.length > arity[1]) {
    throw new KlfInputError(
      `${at}.args: "${op}" takes ${
        arity[0] === arity[1] ? arity[0] : `${arity[0]} or more`
      } arguments, got ${args.length}`,
      { path: `${at}.args` },
    );
  }
  const parts = args.map((arg, i) => {
    const where = `${at}.args[${i}]`;
    if (typeof arg === "number") {
      requireNumber(arg, where);
      return () => arg;
    }
    if (typeof arg === "string") {
      parsePath(arg, where);
      return (record, state) => numericField(record, arg, state.index, at);
    }
    const inner = compileExpression(arg, where, true);
    return (record, state) => inner(record, { index: state.index, previous: null });
  });
  return (record, state) => {
    const values = parts.map((part) => part(record, state));
    switch (op) {
      case "add":
        return values.reduce((a, b) => a + b, 0);
      case "mul":
        return values.reduce((a, b) => a * b, 1);
      case "sub":
        return values[0] - values[1];
      case "div":
        return values[1] === 0 ? null : values[0] / values[1];
      case "min":
        return Math.min(...values);
      case "max":
        return Math.max(...values);
      case "abs":
        return Math.abs(values[0]);
      case "round": {
        const digits = values.length > 1 ? values[1] : 0;
        const factor = 10 ** digits;
        return Math.round(values[0] * factor) / factor;
      }
      default: {
        // pct_change: (a - b) / b with two arguments; with one, the change from the previous record.
        if (values.length === 2) {
          return values[1] === 0
            ? null
            : (values[0] - values[1]) / values[1];
        }
        state.current = values[0];
        const before = state.previous;
        return before === null || before === 0 ? null : (values[0] - before) / before;
      }
    }
  };
}

function windowStep(records, spec, at) {
  const field = requireString(spec.field, `${at}.field`);
  parsePath(field, `${at}.field`);
  const size = requireInteger(spec.size, `${at}.size`, 1);
  const op = oneOf(spec.op ?? "avg", WINDOW_OPS, `${at}.op`);
  const as = requireString(spec.as ?? `${field}_${op}_${size}`, `${at}.as`);
  const by = spec.by === undefined ? [] : fieldList(spec.by, `${at}.by`);
  const partial = spec.partial === true;
  const windows = new Map();
  return records.map((record, index) => {
    const value = numericField(record, field, index, at);
    const key = by.length === 0 ? "" : canonical(by.map((f) => getPath(record, f) ?? null));
    let window = windows.get(key);
    if (window === undefined) {
      window = [];
      windows.set(key, window);
    }
    window.push(value);
    if (window.length > size) window.shift();
    const out = cloneData(record);
    setPath(out, as, window.length < size && !partial ? null : aggregate(op, window));
    return out;
  });
}

function groupByStep(records, spec, at) {
  const by = spec.by === undefined ? [] : fieldList(spec.by, `${at}.by`);
  const aggregates = requireObject(spec.aggregates ?? {}, `${at}.aggregates`);
  const plan = Object.keys(aggregates).map((name) => {
    const where = `${at}.aggregates.${name}`;
    const a = requireObject(aggregates[name], where);
    const op = oneOf(a.op, AGGREGATE_OPS, `${where}.op`);
    if (a.field !== undefined) parsePath(a.field, `${where}.field`);
    else if (op !== "count") throw inputError(`${where}.field`, `the field to ${op}`, a.field);
    return { name, op, field: a.field, where };
  });
  const groups = new Map();
  records.forEach((record, index) => {
    const values = by.map((f) => getPath(record, f) ?? null);
    const key = canonical(values);
    let group = groups.get(key);
    if (group === undefined) {
      group = { values, columns: plan.map(() => []) };
      groups.set(key, group);
    }
    plan.forEach((p, k) => {
      if (p.field === undefined) group.columns[k].push(1);
      else if (p.op === "count") {
        if (getPath(record, p.field) !== undefined && getPath(record, p.field) !== null) {
          group.columns[k].push(1);
        }
      } else if (p.op === "first" || p.op === "last") {
        group.columns[k].push(getPath(record, p.field) ?? null);
      } else group.columns[k].push(numericField(record, p.field, index, p.where));
    });
  });
  return [...groups.values()].map((group) => {
    const out = {};
    by.forEach((field, i) => setPath(out, field, group.values[i]));
    plan.forEach((p, k) => {
      out[p.name] = aggregate(p.op, group.columns[k]);
    });
    return out;
  });
}

/**
 * Batch validation: each record against settings.schema and settings.rules (unique, range,
 * required, pattern, custom), sorted into valid and invalid ones.
 */
export class BaseDataValidator extends BaseFunction {
  static defaults = { schema: null, rules: [] };

  /** `{valid: [records], invalid: [{index, record, errors: [{path, message}]}], summary}`. */
  validateRecords(records) {
    requireArray(records, "records");
    const errors = records.map(() => []);
    const schema = this.settings.schema;
    records.forEach((record, i) => {
      if (schema !== null && schema !== undefined) {
        errors[i].push(
          ...validateSchema(record, schema, {
            root: `records[${i}]`,
            schemaPath: "settings.schema",
          }).errors,
        );
      } else if (!isPlainObject(record)) {
        errors[i].push({
          path: `records[${i}]`,
          message: `expected an object, got ${show(record)}`,
        });
      }
    });
    const rules = requireArray(this.settings.rules ?? [], "settings.rules", configError);
    rules.forEach((rule, r) => this.#applyRule(rule, `settings.rules[${r}]`, records, errors));
    const valid = [];
    const invalid = [];
    records.forEach((record, index) => {
      if (errors[index].length === 0) valid.push(record);
      else invalid.push({ index, record, errors: errors[index] });
    });
    return {
      valid,
      invalid,
      summary: { total: records.length, valid: valid.length, invalid: invalid.length },
    };
  }

  /** An array, or `{records}`. */
  async execute(input) {
    return this.validateRecords(
      Array.isArray(input) ? input : requireObject(input, "input").records,
    );
  }

  #applyRule(rule, at, records, errors) {
    requireObject(rule, at, configError);
    const keys = Object.keys(rule);
    const kinds = ["unique", "range", "required", "pattern", "custom"];
    if (keys.length !== 1 || !kinds.includes(keys[0])) {
      throw new ConfigError(
        `${at}: a rule is one of ${kinds.map((k) => `{${k}}`).join(", ")}, got keys ${
          keys.join(", ") || "none"
        }`,
        { path: at },
      );
    }
    const kind = keys[0];
    const arg = rule[kind];
    const each = (check) =>
      records.forEach((record, i) => {
        if (isPlainObject(record)) check(record, i);
      });
    switch (kind) {
      case "required": {
        const fields = fieldList(arg, `${at}.required`);
        each((record, i) => {
          for (const field of fields) {
            const value = getPath(record, field);
            if (value === undefined || value === null || value === "") {
              errors[i].push({ path: `records[${i}].${field}`, message: "is required" });
            }
          }
        });
        break;
      }
      case "unique": {
        const fields = fieldList(arg, `${at}.unique`);
        const first = new Map();
        each((record, i) => {
          const values = fields.map((f) => getPath(record, f) ?? null);
          if (values.every((v) => v === null)) return;
          const key = canonical(values);
          if (first.has(key)) {
            errors[i].push({
              path: `records[${i}].${fields[0]}`,
              message: `duplicates records[${first.get(key)}] on ${fields.join(", ")}`,
            });
          } else {
            first.set(key, i);
          }
        });
        break;
      }
      case "range": {
        requireObject(arg, `${at}.range`, configError);
        const field = requireString(arg.field, `${at}.range.field`, configError);
        const min = arg.min === undefined
          ? -Infinity
          : requireNumber(arg.min, `${at}.range.min`, configError);
        const max = arg.max === undefined
          ? Infinity
          : requireNumber(arg.max, `${at}.range.max`, configError);
        each((record, i) => {
          const value = getPath(record, field);
          if (value === undefined || value === null) return;
          if (typeof value !== "number" || !Number.isFinite(value)) {
            errors[i].push({
              path: `records[${i}].${field}`,
              message: `expected a number, got ${show(value)}`,
            });
          } else if (value < min || value > max) {
            errors[i].push({
              path: `records[${i}].${field}`,
              message: `expected a number in [${min}, ${max}], got ${value}`,
            });
          }
        });
        break;
      }
      case "pattern": {
        requireObject(arg, `${at}.pattern`, configError);
        const field = requireString(arg.field, `${at}.pattern.field`, configError);
        const regex = schemaPattern(
          requireString(arg.pattern, `${at}.pattern.pattern`, configError),
          `${at}.pattern.pattern`,
        );
        each((record, i) => {
          const value = getPath(record, field);
          if (value === undefined || value === null) return;
          if (typeof value !== "string" || !regex.test(value)) {
            errors[i].push({
              path: `records[${i}].${field}`,
              message: `expected a string matching /${arg.pattern}/, got ${show(value)}`,
            });
          }
        });
        break;
      }
      default: {
        const name = requireString(arg, `${at}.custom`, configError);
        if (typeof this[name] !== "function") {
          throw new ConfigError(`${at}.custom: the class has no method ${JSON.stringify(name)}`, {
            path: `${at}.custom`,
          });
        }
        each((record, i) => {
          const found = this[name](record, i, records);
          const list = found === null || found === undefined || found === true
            ? []
            : Array.isArray(found)
            ? found
            : [found];
          for (const message of list) {
            errors[i].push({ path: `records[${i}]`, message: String(message) });
          }
        });
      }
    }
  }
}

const CASTS = ["number", "string", "boolean", "date"];
const MAPPING_KEYS = [
  "from",
  "value",
  "cast",
  "default",
  "required",
  "trim",
  "lowercase",
  "uppercase",
];

/**
 * Declarative reshaping of records: output fields from input paths with casts, defaults and
 * string clean-up; drop fields; flatten and unflatten nested objects.
 */
export class BaseDataTransformer extends BaseFunction {
  static defaults = { mapping: {}, drop: [], keepUnmapped: false };

  #compiled = { source: null, fields: [] };

  /** The record reshaped by settings.mapping (`where` names it in errors). */
  transform(record, where = "record") {
    requireObject(record, where);
    const s = this.settings;
    const out = s.keepUnmapped === true ? cloneData(record) : {};
    for (const field of this.#mapping()) {
      let value = field.value !== undefined ? cloneData(field.value) : getPath(record, field.from);
      if (typeof value === "string") {
        if (field.trim) value = value.trim();
        if (field.lowercase) value = value.toLowerCase();
        if (field.uppercase) value = value.toUpperCase();
      }
      if (
        value === undefined || value === null
        || (value === "" && field.cast !== undefined && field.cast !== "string")
      ) {
        if (field.default !== undefined) value = cloneData(field.default);
        else if (field.required) {
          throw new KlfInputError(
            `${joinPathText(where, field.from)}: is required (mapped to ${field.to})`,
            { path: joinPathText(where, field.from) },
          );
        } else if (value === undefined) continue;
        else value = null;
      } else if (field.cast !== undefined) {
        value = castValue(value, field.cast, joinPathText(where, field.from));
      }
      setPath(out, field.to, value);
    }
    for (const path of requireArray(s.drop ?? [], "settings.drop", configError)) {
      deletePath(out, path);
    }
    return out;
  }

  transformAll(records) {
    requireArray(records, "records");
    return records.map((record, i) => this.transform(record, `records[${i}]`));
  }

  /** `{a: {b: 1}, c: [2]}` → `{"a.b": 1, "c.0": 2}` (empty objects and arrays kept as values). */
  flatten(obj, sep = ".") {
    requireObject(obj, "obj");
    const out = {};
    const walk = (value, prefix) => {
      const isContainer = isPlainObject(value) || Array.isArray(value);
      const keys = isContainer ? Object.keys(value) : [];
      if (!isContainer || (keys.length === 0 && prefix !== "")) {
        out[prefix] = value;
        return;
      }
      for (const key of keys) walk(value[key], prefix === "" ? key : `${prefix}${sep}${key}`);
    };
    walk(obj, "");
    return out;
  }

  /** The reverse of flatten: numeric segments become array indexes. */
  unflatten(obj, sep = ".") {
    requireObject(obj, "obj");
    if (typeof sep !== "string" || sep === "") throw inputError("sep", "a non-empty string", sep);
    const out = {};
    for (const key of Object.keys(obj)) {
      const segments = key.split(sep).map((
        part,
      ) => (/^(0|[1-9]\d{0,8})$/.test(part) ? Number(part) : part));
      if (typeof segments[0] === "number") segments[0] = String(segments[0]);
      setPath(out, segments, cloneData(obj[key]));
    }
    return out;
  }

  /** An array or `{records}` → `{records}`; `{record}` → `{record}`; any other object → the record. */
  async execute(input) {
    if (Array.isArray(input)) return { records: this.transformAll(input) };
    requireObject(input, "input");
    if (Array.isArray(input.records)) return { records: this.transformAll(input.records) };
    if (isPlainObject(input.record)) return { record: this.transform(input.record) };
    return this.transform(input, "input");
  }

  #mapping() {
    const source = this.settings.mapping;
    if (this.#compiled.source === source) return this.#compiled.fields;
    requireObject(source, "settings.mapping", configError);
    const fields = Object.keys(source).map((to) => {
      const at = `settings.mapping.${to}`;
      parsePath(to, at);
      const spec = typeof source[to] === "string"
        ? { from: source[to] }
        : requireObject(source[to], at, configError);
      if (spec.value === undefined) {
        parsePath(requireString(spec.from, `${at}.from`, configError), `${at}.from`);
      }
      if (spec.cast !== undefined) oneOf(spec.cast, CASTS, `${at}.cast`, configError);
      for (const key of Object.keys(spec)) {
        if (!MAPPING_KEYS.includes(key)) {
          throw new ConfigError(
            `${at}.${key}: unknown option (expected ${MAPPING_KEYS.join(", ")})`,
            { path: `${at}.${key}` },
          );
        }
      }
      return { ...spec, to, from: spec.from ?? to };
    });
    this.#compiled = { source, fields };
    return fields;
  }
}

function joinPathText(base, path) {
  return typeof path === "string" && path.startsWith("[") ? `${base}${path}` : `${base}.${path}`;
}

function castValue(value, cast, path) {
  switch (cast) {
    case "string":
      return typeof value === "string"
        ? value
        : typeof value === "object"
        ? JSON.stringify(value)
        : String(value);
    case "number": {
      if (typeof value === "number" && Number.isFinite(value)) return value;
      if (typeof value === "string" && NUMBER_TEXT.test(value.trim())) return Number(value.trim());
      if (typeof value === "boolean") return value ? 1 : 0;
      throw inputError(path, "a number (or numeric text) to cast", value);
    }
    case "boolean": {
      if (typeof value === "boolean") return value;
      if (value === 1 || value === 0) return value === 1;
      const lower = typeof value === "string" ? value.trim().toLowerCase() : null;
      if (["true", "1", "yes", "y", "on"].includes(lower)) return true;
      if (["false", "0", "no", "n", "off"].includes(lower)) return false;
      throw inputError(path, "a boolean (true/false, 1/0, yes/no, on/off) to cast", value);
    }
    default: {
      // date: ISO 8601 text (UTC) from milliseconds since the epoch or a date string.
      const ms = typeof value === "number"
        ? value
        : typeof value === "string"
        ? Date.parse(value.trim())
        : NaN;
      if (!Number.isFinite(ms) || Math.abs(ms) > 8.64e15) {
        throw inputError(
          path,
          "a date (milliseconds since the epoch or an ISO 8601 string) to cast",
          value,
        );
      }
      return new Date(ms).toISOString();
    }
  }
}
