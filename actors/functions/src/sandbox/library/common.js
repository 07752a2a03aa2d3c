// ---------------------------------------------------------------------------------------------
// klf:base library — common helpers: the error classes, paths, JSON-schema checks, conditions.
//
// This file and the other library/*.js files are appended to base.js and compiled as one module
// (see compile.rs), so they share its scope: BaseFunction, HostError, isPlainObject, cloneData,
// canonical. Nothing here runs at load time beyond defining functions and classes, so that an
// instance that uses none of it pays only for the bytecode.
// ---------------------------------------------------------------------------------------------

/**
 * Bad input: `message` names the field and what was expected, `path` is where
 * (`input.records[3].price`), `errors` the full list when there are several.
 */
export class KlfInputError extends Error {
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "InputError";
    if (details.path !== undefined) this.path = details.path;
    if (details.errors !== undefined) this.errors = details.errors;
  }
}

/** Bad settings (the manifest's [config] or a class's defaults); `path` is `settings.…`. */
export class ConfigError extends KlfInputError {
  constructor(message, details = {}) {
    super(message, details);
    this.name = "ConfigError";
  }
}

/** Something asked for does not exist (HTTP-shaped handlers answer 404). */
export class NotFoundError extends KlfInputError {
  constructor(message, details = {}) {
    super(message, details);
    this.name = "NotFound";
    this.status = 404;
  }
}

/** Credentials missing or wrong (`code` says which), or access refused (`status` 403). */
export class AuthError extends Error {
  constructor(message, code = "unauthenticated", status = 401) {
    super(message);
    this.name = "AuthError";
    this.code = code;
    this.status = status;
  }
}

/** Encryption or decryption failed (tampered envelope, wrong key, missing key). */
export class CryptoError extends Error {
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "CryptoError";
    if (details.path !== undefined) this.path = details.path;
  }
}

/** A write lost an optimistic-concurrency race, or something already exists. */
export class ConflictError extends Error {
  constructor(message, details = {}) {
    super(message);
    this.name = "ConflictError";
    this.status = 409;
    if (details.expectedVersion !== undefined) this.expectedVersion = details.expectedVersion;
    if (details.actualVersion !== undefined) this.actualVersion = details.actualVersion;
  }
}

/** Over a rate limit; try again after `retryAfterMs`. */
export class RateLimitedError extends Error {
  constructor(message, retryAfterMs) {
    super(message);
    this.name = "RateLimited";
    this.status = 429;
    this.retryAfterMs = retryAfterMs;
  }
}

/** A workflow step failed; `steps` is the trace `{id: {status, output?|error, ms}}`. */
export class WorkflowError extends Error {
  constructor(message, steps) {
    super(message);
    this.name = "WorkflowError";
    this.steps = steps;
  }
}

// ---- describing values and paths -------------------------------------------------------------

// A short description of a value for error messages: `"abc"`, `12`, `null`, `an object`.
function show(value) {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (typeof value === "string") {
    return value.length > 40 ? `${JSON.stringify(value.slice(0, 40))}…` : JSON.stringify(value);
  }
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === "function") return "a function";
  if (typeof value === "bigint") return `${value}n`;
  return "an object";
}

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$-]*$/;

// `base` + one segment: `a.b`, `a[3]`, `a["x y"]`.
function joinPath(base, key) {
  if (typeof key === "number") return `${base}[${key}]`;
  if (base === "") return IDENTIFIER.test(key) ? key : `[${JSON.stringify(key)}]`;
  return IDENTIFIER.test(key) ? `${base}.${key}` : `${base}[${JSON.stringify(key)}]`;
}

function inputError(path, expected, value) {
  return new KlfInputError(`${path}: expected ${expected}, got ${show(value)}`, { path });
}

function configError(path, expected, value) {
  return new ConfigError(`${path}: expected ${expected}, got ${show(value)}`, { path });
}

// Argument checks: return the value, or throw KlfInputError (or `make`'s error) naming `path`.
function requireObject(value, path, make = inputError) {
  if (!isPlainObject(value)) throw make(path, "an object", value);
  return value;
}

function requireArray(value, path, make = inputError) {
  if (!Array.isArray(value)) throw make(path, "an array", value);
  return value;
}

function requireString(value, path, make = inputError) {
  if (typeof value !== "string" || value === "") throw make(path, "a non-empty string", value);
  return value;
}

function requireNumber(value, path, make = inputError) {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw make(path, "a finite number", value);
  }
  return value;
}

function requireInteger(value, path, min = 0, make = inputError) {
  if (!Number.isSafeInteger(value) || value < min) {
    throw make(path, `an integer ≥ ${min}`, value);
  }
  return value;
}

function requireRecords(records, path) {
  requireArray(records, path);
  for (let i = 0; i < records.length; i++) requireObject(records[i], `${path}[${i}]`);
  return records;
}

function oneOf(value, allowed, path, make = inputError) {
  if (!allowed.includes(value)) {
    throw make(path, `one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}`, value);
  }
  return value;
}

// The caller's per-call ctx if given, else the instance's shared one.
function ctxOf(self, ctx) {
  return ctx ?? self.ctx;
}

// "order.created" → "OrderCreated".
function pascalCase(text) {
  return String(text)
    .split(/[^A-Za-z0-9]+/)
    .filter((part) => part !== "")
    .map((part) => part[0].toUpperCase() + part.slice(1))
    .join("");
}

function isoTime(ms) {
  return new Date(ms).toISOString();
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a === "number" && typeof b === "number") return Number.isNaN(a) && Number.isNaN(b);
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!deepEqual(a[i], b[i])) return false;
    return true;
  }
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  for (const key of keys) if (!Object.hasOwn(b, key) || !deepEqual(a[key], b[key])) return false;
  return true;
}

// Serialises calls per key within this instance (read-modify-write over ctx.kv).
class KeyedLock {
  #tails = new Map();

  async run(key, task) {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let release;
    const mine = new Promise((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.#tails.set(key, tail);
    await previous;
    try {
      return await task();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

// ---- paths: "a.b[2].c" --------------------------------------------------------------------------

const parsedPaths = new Map();
const FORBIDDEN_KEYS = new Set(["__proto__", "constructor", "prototype"]);

// Segments of a path: strings (keys) and numbers (indexes). An array is taken as segments.
function parsePath(path, label = "path") {
  if (Array.isArray(path)) {
    for (let i = 0; i < path.length; i++) {
      const segment = path[i];
      if (typeof segment !== "string" && !Number.isSafeInteger(segment)) {
        throw inputError(`${label}[${i}]`, "a key (string) or an index (integer)", segment);
      }
    }
    return path;
  }
  if (typeof path !== "string") {
    throw inputError(label, 'a path such as "a.b[2].c"', path);
  }
  const cached = parsedPaths.get(path);
  if (cached !== undefined) return cached;
  const bad = (why) =>
    new KlfInputError(`${label}: ${JSON.stringify(path)} is not a valid path (${why})`, {
      path: label,
    });
  const segments = [];
  let i = 0;
  const n = path.length;
  while (i < n) {
    if (path[i] === "[") {
      const close = path.indexOf("]", i);
      if (close < 0) throw bad("a [ is not closed");
      const inner = path.slice(i + 1, close).trim();
      if (/^\d+$/.test(inner)) {
        segments.push(Number(inner));
      } else if (
        inner.length >= 2 && (inner[0] === '"' || inner[0] === "'") && inner.at(-1) === inner[0]
      ) {
        segments.push(inner.slice(1, -1));
      } else {
        throw bad(`[${inner}] is neither an index nor a quoted key`);
      }
      i = close + 1;
    } else {
      let j = i;
      while (j < n && path[j] !== "." && path[j] !== "[") j++;
      if (j === i) throw bad("an empty segment");
      segments.push(path.slice(i, j));
      i = j;
    }
    if (i < n) {
      if (path[i] === ".") {
        i++;
        if (i === n) throw bad("it ends with a dot");
      } else if (path[i] !== "[") {
        throw bad(`unexpected ${JSON.stringify(path[i])} after a ]`);
      }
    }
  }
  if (parsedPaths.size >= 512) parsedPaths.clear();
  parsedPaths.set(path, segments);
  return segments;
}

/** The value at `path` ("a.b[2].c" or an array of segments) in `obj`, or `fallback`. */
export function getPath(obj, path, fallback = undefined) {
  const segments = parsePath(path);
  let current = obj;
  for (const segment of segments) {
    if (current === null || typeof current !== "object" || !Object.hasOwn(current, segment)) {
      return fallback;
    }
    current = current[segment];
  }
  return current === undefined ? fallback : current;
}

/**
 * Sets the value at `path` in `obj`, creating objects (or arrays, before an index) on the way.
 * Refuses `__proto__`/`constructor`/`prototype` keys and walking into a non-object. Returns obj.
 */
export function setPath(obj, path, value) {
  const segments = parsePath(path);
  if (obj === null || typeof obj !== "object") throw inputError("setPath target", "an object", obj);
  if (segments.length === 0) throw new KlfInputError("setPath: the path is empty", { path: "" });
  let current = obj;
  let where = "";
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i];
    if (FORBIDDEN_KEYS.has(segment)) {
      throw new KlfInputError(`${joinPath(where, segment)}: the key "${segment}" is not allowed`, {
        path: joinPath(where, segment),
      });
    }
    where = joinPath(where, segment);
    if (i === segments.length - 1) {
      current[segment] = value;
      break;
    }
    let next = Object.hasOwn(current, segment) ? current[segment] : undefined;
    if (next === undefined || next === null) {
      next = typeof segments[i + 1] === "number" ? [] : {};
      current[segment] = next;
    } else if (typeof next !== "object") {
      throw new KlfInputError(
        `${where}: is ${show(next)}, cannot set ${JSON.stringify(segments[i + 1])} inside it`,
        { path: where },
      );
    }
    current = next;
  }
  return obj;
}

/** Removes the value at `path`; true when there was one. */
export function deletePath(obj, path) {
  const segments = parsePath(path);
  if (segments.length === 0) return false;
  const parent = segments.length === 1 ? obj : getPath(obj, segments.slice(0, -1));
  const last = segments.at(-1);
  if (parent === null || typeof parent !== "object" || !Object.hasOwn(parent, last)) return false;
  if (Array.isArray(parent) && typeof last === "number") parent.splice(last, 1);
  else delete parent[last];
  return true;
}

// ---- JSON schema (a subset) -------------------------------------------------------------------

const SCHEMA_TYPES = ["string", "number", "integer", "boolean", "object", "array", "null"];
const patternCache = new Map();

function schemaPattern(pattern, spath) {
  let regex = patternCache.get(pattern);
  if (regex === undefined) {
    try {
      regex = new RegExp(pattern, "u");
    } catch (error) {
      throw new ConfigError(
        `${spath}: ${JSON.stringify(pattern)} is not a valid regular expression (${error.message})`,
        { path: spath },
      );
    }
    if (patternCache.size >= 128) patternCache.clear();
    patternCache.set(pattern, regex);
  }
  return regex;
}

function hasType(value, type) {
  switch (type) {
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "integer":
      return Number.isInteger(value);
    case "boolean":
      return typeof value === "boolean";
    case "object":
      return isPlainObject(value);
    case "array":
      return Array.isArray(value);
    case "null":
      return value === null;
    default:
      return false;
  }
}

function validDate(year, month, day) {
  const date = new Date(Date.UTC(year, month - 1, day));
  return date.getUTCFullYear() === year && date.getUTCMonth() === month - 1
    && date.getUTCDate() === day;
}

const FORMATS = {
  "date-time": (s) => {
    const m =
      /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$/
        .exec(s);
    return (
      m !== null && validDate(+m[1], +m[2], +m[3]) && +m[4] < 24 && +m[5] < 60 && +m[6] < 61
      && (m[9] === undefined || (+m[9] < 24 && +m[10] < 60))
    );
  },
  date: (s) => {
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
    return m !== null && validDate(+m[1], +m[2], +m[3]);
  },
  email: (s) =>
    /^[^\s@"<>()[\],;:]+@[^\s@"<>()[\],;:]+\.[^\s@"<>()[\],;:.]+$/.test(s) && s.length <= 254,
  uri: (s) => /^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$/.test(s),
  uuid: (s) =>
    /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(s),
};

const FORMAT_NAMES = {
  "date-time": "a date-time (RFC 3339)",
  date: "a date (YYYY-MM-DD)",
  email: "an email address",
  uri: "a URI",
  uuid: "a UUID",
};

const MAX_SCHEMA_ERRORS = 100;

/**
 * Checks `value` against a JSON-schema subset. Returns `{valid, errors: [{path, message}]}`;
 * paths start at `options.root` ("input" by default). A malformed schema throws ConfigError
 * naming the schema path.
 */
export function validateSchema(value, schema, options = {}) {
  const errors = [];
  const root = typeof options.root === "string" ? options.root : "input";
  const schemaRoot = typeof options.schemaPath === "string" ? options.schemaPath : "schema";
  checkSchemaShape(schema, schemaRoot);
  checkSchema(value, schema, root, schemaRoot, errors);
  return { valid: errors.length === 0, errors };
}

const checkedSchemas = new WeakSet();
const SCHEMA_NUMBERS = ["minimum", "maximum", "multipleOf"];
const SCHEMA_COUNTS = ["minLength", "maxLength", "minItems", "maxItems"];
const SCHEMA_LISTS = ["allOf", "anyOf", "oneOf"];

// The whole schema is checked once (per schema object), whatever the value: a mistake in a branch
// this value does not reach is still reported.
function checkSchemaShape(schema, spath) {
  if (typeof schema === "boolean") return;
  if (!isPlainObject(schema)) {
    throw configError(spath, "a JSON schema (an object or a boolean)", schema);
  }
  if (checkedSchemas.has(schema)) return;
  if (schema.type !== undefined) {
    if (Array.isArray(schema.type)) {
      schema.type.forEach((t, i) => oneOf(t, SCHEMA_TYPES, `${spath}.type[${i}]`, configError));
    } else oneOf(schema.type, SCHEMA_TYPES, `${spath}.type`, configError);
  }
  if (schema.enum !== undefined) requireArray(schema.enum, `${spath}.enum`, configError);
  for (const key of SCHEMA_NUMBERS) {
    if (schema[key] !== undefined) requireNumber(schema[key], `${spath}.${key}`, configError);
  }
  for (const key of ["exclusiveMinimum", "exclusiveMaximum"]) {
    if (schema[key] !== undefined && typeof schema[key] !== "boolean") {
      requireNumber(schema[key], `${spath}.${key}`, configError);
    }
  }
  for (const key of SCHEMA_COUNTS) {
    if (schema[key] !== undefined) requireInteger(schema[key], `${spath}.${key}`, 0, configError);
  }
  if (schema.pattern !== undefined) {
    schemaPattern(
      requireString(schema.pattern, `${spath}.pattern`, configError),
      `${spath}.pattern`,
    );
  }
  if (schema.format !== undefined) requireString(schema.format, `${spath}.format`, configError);
  if (schema.uniqueItems !== undefined && typeof schema.uniqueItems !== "boolean") {
    throw configError(`${spath}.uniqueItems`, "true or false", schema.uniqueItems);
  }
  if (schema.required !== undefined) {
    requireArray(schema.required, `${spath}.required`, configError).forEach((key, i) =>
      requireString(key, `${spath}.required[${i}]`, configError)
    );
  }
  if (Array.isArray(schema.items)) {
    schema.items.forEach((sub, i) => checkSchemaShape(sub, `${spath}.items[${i}]`));
  } else if (schema.items !== undefined) checkSchemaShape(schema.items, `${spath}.items`);
  if (schema.properties !== undefined) {
    const properties = requireObject(schema.properties, `${spath}.properties`, configError);
    for (const key of Object.keys(properties)) {
      checkSchemaShape(properties[key], `${spath}.properties.${key}`);
    }
  }
  if (schema.additionalProperties !== undefined) {
    checkSchemaShape(schema.additionalProperties, `${spath}.additionalProperties`);
  }
  for (const key of SCHEMA_LISTS) {
    if (schema[key] === undefined) continue;
    const list = requireArray(schema[key], `${spath}.${key}`, configError);
    if (list.length === 0) throw configError(`${spath}.${key}`, "at least one schema", list);
    list.forEach((sub, i) => checkSchemaShape(sub, `${spath}.${key}[${i}]`));
  }
  if (schema.not !== undefined) checkSchemaShape(schema.not, `${spath}.not`);
  checkedSchemas.add(schema);
}

function checkSchema(value, schema, path, spath, errors) {
  if (errors.length >= MAX_SCHEMA_ERRORS) return;
  if (schema === true) return;
  if (schema === false) {
    errors.push({ path, message: "is not allowed here" });
    return;
  }
  if (!isPlainObject(schema)) {
    throw configError(spath, "a JSON schema (an object or a boolean)", schema);
  }
  const fail = (message) => errors.push({ path, message });

  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    for (const type of types) oneOf(type, SCHEMA_TYPES, `${spath}.type`, configError);
    if (!types.some((type) => hasType(value, type))) {
      fail(`expected ${types.join(" or ")}, got ${show(value)}`);
      return;
    }
  }
  if (schema.enum !== undefined) {
    requireArray(schema.enum, `${spath}.enum`, configError);
    if (!schema.enum.some((option) => deepEqual(option, value))) {
      fail(
        `expected one of ${schema.enum.map((option) => JSON.stringify(option)).join(", ")}, got ${
          show(value)
        }`,
      );
    }
  }
  if (Object.hasOwn(schema, "const") && !deepEqual(schema.const, value)) {
    fail(`expected ${JSON.stringify(schema.const)}, got ${show(value)}`);
  }
  if (typeof value === "number") checkNumber(value, schema, spath, fail);
  if (typeof value === "string") checkString(value, schema, spath, fail);
  if (Array.isArray(value)) checkArray(value, schema, path, spath, errors, fail);
  if (isPlainObject(value)) checkObject(value, schema, path, spath, errors);

  if (schema.allOf !== undefined) {
    requireArray(schema.allOf, `${spath}.allOf`, configError);
    schema.allOf.forEach((sub, i) => checkSchema(value, sub, path, `${spath}.allOf[${i}]`, errors));
  }
  for (const k of ["anyOf", "oneOf"]) {
    if (schema[k] === undefined) continue;
    const options = requireArray(schema[k], `${spath}.${k}`, configError);
    const outcomes = options.map((sub, i) => {
      const found = [];
      checkSchema(value, sub, path, `${spath}.${k}[${i}]`, found);
      return found;
    });
    const passing = outcomes.filter((found) => found.length === 0).length;
    if (passing === 0) {
      const closest = outcomes.reduce(
        (best, found) => (found.length < best.length ? found : best),
        outcomes[0] ?? [],
      );
      const hint = closest.length > 0 ? ` (closest: ${closest[0].path} ${closest[0].message})` : "";
      fail(`does not match any of the ${options.length} schemas in ${k}${hint}`);
    } else if (k === "oneOf" && passing > 1) {
      fail(`matches ${passing} of the schemas in oneOf, expected exactly one`);
    }
  }
  if (schema.not !== undefined) {
    const found = [];
    checkSchema(value, schema.not, path, `${spath}.not`, found);
    if (found.length === 0) fail("must not match the schema in not");
  }
}

function checkNumber(value, schema, spath, fail) {
  const bound = (key) => {
    const b = schema[key];
    if (b === undefined || typeof b === "boolean") return undefined;
    return requireNumber(b, `${spath}.${key}`, configError);
  };
  const min = bound("minimum");
  const max = bound("maximum");
  const exMin = schema.exclusiveMinimum === true ? min : bound("exclusiveMinimum");
  const exMax = schema.exclusiveMaximum === true ? max : bound("exclusiveMaximum");
  if (exMin !== undefined && !(value > exMin)) fail(`expected a number > ${exMin}, got ${value}`);
  else if (min !== undefined && schema.exclusiveMinimum !== true && value < min) {
    fail(`expected a number ≥ ${min}, got ${value}`);
  }
  if (exMax !== undefined && !(value < exMax)) fail(`expected a number < ${exMax}, got ${value}`);
  else if (max !== undefined && schema.exclusiveMaximum !== true && value > max) {
    fail(`expected a number ≤ ${max}, got ${value}`);
  }
  if (schema.multipleOf !== undefined) {
    const step = requireNumber(schema.multipleOf, `${spath}.multipleOf`, configError);
    const ratio = value / step;
    if (Math.abs(ratio - Math.round(ratio)) > 1e-9) {
      fail(`expected a multiple of ${step}, got ${value}`);
    }
  }
}

function checkString(value, schema, spath, fail) {
  if (schema.minLength !== undefined || schema.maxLength !== undefined) {
    const length = [...value].length;
    if (
      schema.minLength !== undefined
      && length < requireInteger(schema.minLength, `${spath}.minLength`, 0, configError)
    ) {
      fail(`expected at least ${schema.minLength} characters, got ${length}`);
    }
    if (
      schema.maxLength !== undefined
      && length > requireInteger(schema.maxLength, `${spath}.maxLength`, 0, configError)
    ) {
      fail(`expected at most ${schema.maxLength} characters, got ${length}`);
    }
  }
  if (schema.pattern !== undefined) {
    requireString(schema.pattern, `${spath}.pattern`, configError);
    if (!schemaPattern(schema.pattern, `${spath}.pattern`).test(value)) {
      fail(`expected a string matching /${schema.pattern}/, got ${show(value)}`);
    }
  }
  if (schema.format !== undefined) {
    requireString(schema.format, `${spath}.format`, configError);
    const check = Object.hasOwn(FORMATS, schema.format) ? FORMATS[schema.format] : undefined;
    // Unknown formats are annotations only, as in JSON Schema.
    if (check !== undefined && !check(value)) {
      fail(`expected ${FORMAT_NAMES[schema.format]}, got ${show(value)}`);
    }
  }
}

function checkArray(value, schema, path, spath, errors, fail) {
  if (
    schema.minItems !== undefined
    && value.length < requireInteger(schema.minItems, `${spath}.minItems`, 0, configError)
  ) {
    fail(`expected at least ${schema.minItems} items, got ${value.length}`);
  }
  if (
    schema.maxItems !== undefined
    && value.length > requireInteger(schema.maxItems, `${spath}.maxItems`, 0, configError)
  ) {
    fail(`expected at most ${schema.maxItems} items, got ${value.length}`);
  }
  if (schema.uniqueItems === true) {
    const seen = new Map();
    for (let i = 0; i < value.length; i++) {
      const key = canonical(value[i]);
      if (seen.has(key)) {
        fail(`expected unique items, but items ${seen.get(key)} and ${i} are equal`);
        break;
      }
      seen.set(key, i);
    }
  }
  if (schema.items !== undefined) {
    if (Array.isArray(schema.items)) {
      schema.items.forEach((sub, i) => {
        if (i < value.length) {
          checkSchema(value[i], sub, `${path}[${i}]`, `${spath}.items[${i}]`, errors);
        }
      });
    } else {
      for (let i = 0; i < value.length && errors.length < MAX_SCHEMA_ERRORS; i++) {
        checkSchema(value[i], schema.items, `${path}[${i}]`, `${spath}.items`, errors);
      }
    }
  }
}

function checkObject(value, schema, path, spath, errors) {
  if (schema.required !== undefined) {
    requireArray(schema.required, `${spath}.required`, configError);
    for (const key of schema.required) {
      if (!Object.hasOwn(value, key) || value[key] === undefined) {
        errors.push({ path: joinPath(path, key), message: "is required" });
      }
    }
  }
  const properties = schema.properties === undefined
    ? {}
    : requireObject(schema.properties, `${spath}.properties`, configError);
  for (const key of Object.keys(properties)) {
    if (Object.hasOwn(value, key) && value[key] !== undefined) {
      checkSchema(
        value[key],
        properties[key],
        joinPath(path, key),
        `${spath}.properties.${key}`,
        errors,
      );
    }
  }
  const extra = schema.additionalProperties;
  if (extra !== undefined && extra !== true) {
    for (const key of Object.keys(value)) {
      if (Object.hasOwn(properties, key)) continue;
      if (extra === false) {
        errors.push({
          path: joinPath(path, key),
          message: "is not allowed (no such property in the schema)",
        });
      } else {
        checkSchema(
          value[key],
          extra,
          joinPath(path, key),
          `${spath}.additionalProperties`,
          errors,
        );
      }
    }
  }
}

// "input.a: expected a number; input.b: is required" (at most 5, then "and N more").
function summarizeErrors(errors) {
  const shown = errors.slice(0, 5).map((e) => `${e.path}: ${e.message}`);
  if (errors.length > 5) shown.push(`and ${errors.length - 5} more`);
  return shown.join("; ");
}

// ---- conditions: {all:[c]} | {any:[c]} | {not:c} | {field, op, value} -------------------------

const CONDITION_OPS = [
  "eq",
  "ne",
  "gt",
  "gte",
  "lt",
  "lte",
  "in",
  "nin",
  "contains",
  "matches",
  "exists",
];
const compiledConditions = new WeakMap();

/** True when `condition` holds for `facts`. A malformed condition throws KlfInputError. */
export function evaluateCondition(condition, facts, path = "condition") {
  return compileCondition(condition, path)(facts);
}

// A condition as a predicate over facts; checks the whole condition up front, so a mistake in a
// branch that these facts do not reach is still reported.
function compileCondition(condition, path) {
  if (typeof condition === "boolean") return () => condition;
  if (!isPlainObject(condition)) {
    throw inputError(
      path,
      "a condition ({all}, {any}, {not} or {field, op, value}) or a boolean",
      condition,
    );
  }
  const cached = compiledConditions.get(condition);
  if (cached !== undefined) return cached;
  const kinds = ["all", "any", "not", "field"].filter((key) => Object.hasOwn(condition, key));
  if (kinds.length !== 1) {
    throw new KlfInputError(
      kinds.length === 0
        ? `${path}: a condition needs one of "all", "any", "not" or "field"`
        : `${path}: a condition has exactly one of "all", "any", "not", "field", not ${
          kinds.join(" and ")
        }`,
      { path },
    );
  }
  let predicate;
  const kind = kinds[0];
  if (kind === "all" || kind === "any") {
    requireArray(condition[kind], `${path}.${kind}`);
    const parts = condition[kind].map((c, i) => compileCondition(c, `${path}.${kind}[${i}]`));
    predicate = kind === "all"
      ? (facts) => parts.every((p) => p(facts))
      : (facts) => parts.some((p) => p(facts));
  } else if (kind === "not") {
    const inner = compileCondition(condition.not, `${path}.not`);
    predicate = (facts) => !inner(facts);
  } else {
    predicate = compileComparison(condition, path);
  }
  compiledConditions.set(condition, predicate);
  return predicate;
}

function compileComparison(condition, path) {
  for (const key of Object.keys(condition)) {
    if (!["field", "op", "value", "valueFrom", "flags"].includes(key)) {
      throw new KlfInputError(
        `${path}.${key}: unknown key (a comparison has field, op, value or valueFrom, flags)`,
        { path: `${path}.${key}` },
      );
    }
  }
  const field = parsePath(condition.field, `${path}.field`);
  const op = condition.op ?? "eq";
  if (!CONDITION_OPS.includes(op)) {
    throw new KlfInputError(
      `${path}.op: unknown operator ${show(op)} (expected one of ${CONDITION_OPS.join(", ")})`,
      { path: `${path}.op` },
    );
  }
  const from = condition.valueFrom === undefined
    ? null
    : parsePath(condition.valueFrom, `${path}.valueFrom`);
  const fixed = condition.value;
  if (from === null) {
    if ((op === "in" || op === "nin") && !Array.isArray(fixed)) {
      throw inputError(`${path}.value`, `an array for "${op}"`, fixed);
    }
    if (op === "exists" && fixed !== undefined && typeof fixed !== "boolean") {
      throw inputError(`${path}.value`, 'true or false for "exists"', fixed);
    }
    if (
      ["gt", "gte", "lt", "lte"].includes(op) && typeof fixed !== "number"
      && typeof fixed !== "string"
    ) {
      throw inputError(`${path}.value`, `a number or a string for "${op}"`, fixed);
    }
    if (["eq", "ne", "contains"].includes(op) && fixed === undefined) {
      throw inputError(`${path}.value`, `a value for "${op}"`, fixed);
    }
  }
  let regex = null;
  if (op === "matches") {
    requireString(fixed, `${path}.value`);
    try {
      regex = new RegExp(
        fixed,
        condition.flags === undefined ? "" : String(condition.flags).replace(/[gy]/g, ""),
      );
    } catch (error) {
      throw new KlfInputError(
        `${path}.value: ${
          JSON.stringify(fixed)
        } is not a valid regular expression (${error.message})`,
        { path: `${path}.value` },
      );
    }
  }
  return (facts) => {
    const actual = getPath(facts, field);
    const value = from === null ? fixed : getPath(facts, from);
    switch (op) {
      case "eq":
        return deepEqual(actual, value);
      case "ne":
        return !deepEqual(actual, value);
      case "gt":
      case "gte":
      case "lt":
      case "lte": {
        const comparable = (typeof actual === "number" && typeof value === "number")
          || (typeof actual === "string" && typeof value === "string");
        if (!comparable) return false;
        if (op === "gt") return actual > value;
        if (op === "gte") return actual >= value;
        if (op === "lt") return actual < value;
        return actual <= value;
      }
      case "in":
        return Array.isArray(value) && value.some((v) => deepEqual(v, actual));
      case "nin":
        return !Array.isArray(value) || !value.some((v) => deepEqual(v, actual));
      case "contains":
        if (typeof actual === "string") return typeof value === "string" && actual.includes(value);
        return Array.isArray(actual) && actual.some((v) => deepEqual(v, value));
      case "matches":
        return typeof actual === "string" && regex.test(actual);
      case "exists":
        return (actual !== undefined && actual !== null) === (value ?? true);
      default:
        return false;
    }
  };
}

// ---- numbers --------------------------------------------------------------------------------

// A decimal number as text (no hex, no Infinity, no empty string).
const NUMBER_TEXT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

// op over numbers: count, sum, avg, min, max, first, last, stddev (sample; null below 2 values).
function aggregate(op, values) {
  const n = values.length;
  switch (op) {
    case "count":
      return n;
    case "sum":
      return values.reduce((a, b) => a + b, 0);
    case "avg":
      return n === 0 ? null : values.reduce((a, b) => a + b, 0) / n;
    case "min":
      return n === 0 ? null : values.reduce((a, b) => (b < a ? b : a));
    case "max":
      return n === 0 ? null : values.reduce((a, b) => (b > a ? b : a));
    case "first":
      return n === 0 ? null : values[0];
    case "last":
      return n === 0 ? null : values[n - 1];
    case "stddev": {
      if (n < 2) return null;
      const mean = values.reduce((a, b) => a + b, 0) / n;
      const squares = values.reduce((a, b) => a + (b - mean) * (b - mean), 0);
      return Math.sqrt(squares / (n - 1));
    }
    default:
      return undefined;
  }
}

// Total order for sorting: numbers, then strings, then booleans, then other values; null and
// missing last. Deterministic (code-unit order for strings, no locale).
function compareValues(a, b) {
  const rank = (v) =>
    typeof v === "number"
      ? 0
      : typeof v === "string"
      ? 1
      : typeof v === "boolean"
      ? 2
      : v === null || v === undefined
      ? 4
      : 3;
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 0) return a - b;
  if (ra === 1 || ra === 2) return a < b ? -1 : a > b ? 1 : 0;
  if (ra === 3) {
    const ca = canonical(a);
    const cb = canonical(b);
    return ca < cb ? -1 : ca > cb ? 1 : 0;
  }
  return 0;
}
