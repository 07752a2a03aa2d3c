// klf:base — what every KLF function imports (docs/base-library.md).
//
// Evaluated once per instance, before the function's own module, in a context without eval. It
// takes the host's native functions off the global object (so only this module holds them), and
// installs the runner through which the host drives the instance. The natives check capabilities
// and dependencies themselves; nothing here is a security boundary, only the shape of the API.

const native = globalThis.__klf_host__;
delete globalThis.__klf_host__;
const secret = native.secret;

/** Raised when a host request fails: a denied capability, a failed call, a deadline. */
export class HostError extends Error {
  constructor(reply) {
    super(reply.message);
    this.name = reply.kind;
    // The host recognises its own errors by this id when they reach it unchanged.
    Object.defineProperty(this, "klfErrorId", { value: reply.id });
  }
}

// Natives answer with a value, or with {id, kind, message} when the request failed.
function unwrap(reply) {
  if (reply !== null && typeof reply === "object") {
    throw new HostError(reply);
  }
  return reply;
}

function encode(value) {
  const text = JSON.stringify(value);
  return text === undefined ? "null" : text;
}

function decode(text) {
  return text === undefined ? undefined : JSON.parse(text);
}

function describe(value) {
  if (typeof value === "string") return value;
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text;
  } catch {
    return String(value);
  }
}

function makeLog() {
  const emit = (level) => (...parts) => {
    unwrap(native.log(level, parts.map(describe).join(" ")));
  };
  const log = emit("info");
  log.debug = emit("debug");
  log.info = emit("info");
  log.warn = emit("warn");
  log.error = emit("error");
  return Object.freeze(log);
}

// Promises, so that a store reached over the network later does not change the API.
const kv = Object.freeze({
  async get(key) {
    return decode(unwrap(native.kvGet(String(key))));
  },
  async put(key, value) {
    unwrap(native.kvPut(String(key), encode(value)));
  },
  async delete(key) {
    unwrap(native.kvDelete(String(key)));
  },
  async list(prefix = "") {
    return JSON.parse(unwrap(native.kvList(String(prefix))));
  },
});

const log = makeLog();
const now = () => native.now();

// Synchronous host requests whose arguments and answer travel as JSON text.
const request = (fn, op) => (...args) => decode(unwrap(fn(op, encode(args))));

const crypto = Object.freeze({
  hash: request(native.crypto, "hash"),
  hmac: request(native.crypto, "hmac"),
  hmacVerify: request(native.crypto, "hmacVerify"),
  equal: request(native.crypto, "equal"),
  encrypt: request(native.crypto, "encrypt"),
  decrypt: request(native.crypto, "decrypt"),
  randomBytes: request(native.crypto, "randomBytes"),
  generateKey: request(native.crypto, "generateKey"),
  randomUUID: request(native.crypto, "randomUUID"),
});

const schedule = Object.freeze({
  after: request(native.schedule, "after"),
  every: request(native.schedule, "every"),
  cancel: request(native.schedule, "cancel"),
  list: request(native.schedule, "list"),
});

const secretOf = (name) => decode(unwrap(native.secretValue(String(name))));

// callId 0 is "no particular call": the shared this.ctx (see calls.rs for how the host reads it).
function makeCtx(config, callId) {
  return Object.freeze({
    config,
    kv,
    log,
    now,
    async call(target, input) {
      return decode(unwrap(await native.call(callId, String(target), encode(input))));
    },
    crypto,
    secret: secretOf,
    schedule,
    model: Object.freeze({
      async complete(request) {
        return decode(unwrap(await native.model(callId, encode(request ?? {}))));
      },
    }),
  });
}

let identity = null; // what the constructor copies onto the instance
let instance = null;

export class BaseFunction {
  #initialized = false;

  constructor() {
    if (identity === null) {
      throw new TypeError("BaseFunction instances are created by the KLF runtime");
    }
    this.id = identity.id;
    this.name = identity.name;
    this.version = identity.version;
    this.type = identity.type;
    this.config = identity.config;
    this.dependencies = identity.dependencies;
    this.ctx = identity.ctx;
    this.settings = settingsFor(new.target, this.config);
  }

  /** Runs onInitialize, once per instance; the runtime calls it before the first call. */
  async initialize() {
    if (this.#initialized) return;
    this.#initialized = true;
    await this.onInitialize();
  }

  /** One call: the function's logic. `ctx` is this call's context (exact deadline and trace). */
  async execute(input, ctx) {
    throw new Error(`${this.id} does not implement execute(input)`);
  }

  /** True when the class implements execute. */
  async validate() {
    return typeof this.execute === "function" && this.execute !== BaseFunction.prototype.execute;
  }

  /**
   * Runs `static tests = [{name?, input, expect}]` (or `{input, error: "substring"}`) through the
   * same lifecycle as a real call. Returns {passed, failed, results: [{name, passed, ...}]}.
   */
  async test(ctx = this.ctx) {
    const cases = Array.isArray(this.constructor.tests)
      ? this.constructor.tests
      : Array.isArray(this.examples)
        ? this.examples
        : [];
    const results = [];
    for (let index = 0; index < cases.length; index++) {
      const testCase = cases[index] ?? {};
      const name = typeof testCase.name === "string" ? testCase.name : `case ${index + 1}`;
      const wantsError = typeof testCase.error === "string";
      try {
        const actual = await lifecycle(this, testCase.input, ctx);
        if (wantsError) {
          results.push({ name, passed: false, expected: { error: testCase.error }, actual });
        } else if (canonical(actual) === canonical(testCase.expect)) {
          results.push({ name, passed: true });
        } else {
          results.push({ name, passed: false, expected: testCase.expect, actual });
        }
      } catch (error) {
        const message = describe(error);
        if (wantsError && message.includes(testCase.error)) {
          results.push({ name, passed: true });
        } else {
          results.push({ name, passed: false, error: message });
        }
      }
    }
    const passed = results.filter((result) => result.passed).length;
    return { passed, failed: results.length - passed, results };
  }

  async onInitialize() {}

  async onExecute(input, ctx) {}

  async onError(error, ctx) {}
}

const defaultOnExecute = BaseFunction.prototype.onExecute;

// `this.settings`: every class's own `static defaults`, from the outermost base class down to the
// function's class, then the manifest's [config], deep-merged (plain objects merge key by key;
// arrays and other values replace). A fresh copy per instance: changing it changes no default.
function settingsFor(Class, config) {
  const layers = [];
  for (let c = Class; c !== BaseFunction && typeof c === "function"; c = Object.getPrototypeOf(c)) {
    if (Object.hasOwn(c, "defaults") && isPlainObject(c.defaults)) layers.push(c.defaults);
  }
  const settings = {};
  for (let i = layers.length - 1; i >= 0; i--) mergeInto(settings, layers[i]);
  if (isPlainObject(config)) mergeInto(settings, config);
  return settings;
}

function isPlainObject(value) {
  if (value === null || typeof value !== "object") return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function mergeInto(target, source) {
  for (const key of Object.keys(source)) {
    if (key === "__proto__") continue;
    const value = source[key];
    target[key] = isPlainObject(value)
      ? mergeInto(isPlainObject(target[key]) ? target[key] : {}, value)
      : cloneData(value);
  }
  return target;
}

// A copy of plain objects and arrays, nested; anything else (functions, class instances) as is.
function cloneData(value) {
  if (Array.isArray(value)) return value.map(cloneData);
  if (isPlainObject(value)) return mergeInto({}, value);
  return value;
}

// JSON text with object keys sorted, for comparing results.
function canonical(value) {
  return JSON.stringify(value, (key, inner) => {
    if (inner === null || typeof inner !== "object" || Array.isArray(inner)) return inner;
    const sorted = {};
    for (const name of Object.keys(inner).sort()) sorted[name] = inner[name];
    return sorted;
  });
}

// The host's view of one call: onExecute, execute; on a throw, onError, then the throw goes on.
async function lifecycle(target, input, ctx) {
  try {
    // Awaiting the default no-op would cost two promise jobs per call.
    if (target.onExecute !== defaultOnExecute) await target.onExecute(input, ctx);
    return await target.execute(input, ctx);
  } catch (error) {
    try {
      await target.onError(error, ctx);
    } catch (hookError) {
      native.warn(`onError threw while handling an error: ${describe(hookError)}`);
    }
    throw error;
  }
}

function check(token) {
  if (token !== secret) throw new TypeError("the KLF runner is driven by the host only");
}

const runner = Object.freeze({
  // Constructs the default export and initializes it. Returns a reason the module cannot be a
  // function, or null.
  async boot(token, Function_, meta) {
    check(token);
    if (typeof Function_ !== "function" || !(Function_.prototype instanceof BaseFunction)) {
      return "the default export must be a class extending BaseFunction from \"klf:base\"";
    }
    const config = meta.config;
    identity = {
      id: `${meta.name}@${meta.version}`,
      name: meta.name,
      version: meta.version,
      type: meta.type,
      config,
      dependencies: Object.freeze(meta.dependencies.slice()),
      ctx: makeCtx(config, 0),
    };
    instance = new Function_();
    await instance.initialize();
    return null;
  },
  run(token, callId, input) {
    check(token);
    return lifecycle(instance, input, makeCtx(instance.config, callId));
  },
  async validate(token) {
    check(token);
    return instance.validate();
  },
  async test(token, callId) {
    check(token);
    return instance.test(makeCtx(instance.config, callId));
  },
});

Object.defineProperty(globalThis, "__klf_runner__", {
  value: runner,
  enumerable: false,
  writable: false,
  configurable: false,
});
