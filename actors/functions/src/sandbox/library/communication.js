// ---- Communication: BaseMessageProcessor, BaseProtocolHandler, BaseSerializer, BaseConnector --

const RESERVED_HANDLERS = new Set(["onInitialize", "onExecute", "onError"]);

/**
 * Message envelopes `{id, type, payload, headers?, timestamp?}` dispatched to `on<Type>` methods
 * or to other functions (settings.routes), with duplicate suppression by id.
 */
export class BaseMessageProcessor extends BaseFunction {
  static defaults = {
    routes: {},
    dedupe: true,
    dedupeSize: 10000,
    dedupeStore: "memory",
    dedupePrefix: "dedupe/",
  };

  #seen = new Map(); // id → true, oldest first (an LRU)

  /** `{id, type, status: "handled"|"duplicate", result?}`; unknown type → KlfInputError. */
  async process(message, ctx) {
    ctx = ctxOf(this, ctx);
    requireObject(message, "message");
    const { id, type } = message;
    if (typeof id !== "string" && !Number.isFinite(id)) {
      throw inputError("message.id", "a string or a number", id);
    }
    requireString(type, "message.type");
    if (message.headers !== undefined) requireObject(message.headers, "message.headers");
    const handler = this.#handlerFor(type);
    const s = this.settings;
    const dedupe = s.dedupe === true;
    const key = String(id);
    if (dedupe && (await this.#isSeen(key, ctx))) return { id, type, status: "duplicate" };
    // Marked before handling, so a copy arriving while this one runs is a duplicate too; unmarked
    // if handling fails, so a retry is handled.
    if (dedupe) await this.#markSeen(key, true, ctx);
    try {
      const result = handler.kind === "method"
        ? await this[handler.name](message.payload, message, ctx)
        : await ctx.call(handler.target, message);
      return { id, type, status: "handled", result: result ?? null };
    } catch (error) {
      if (dedupe) await this.#markSeen(key, false, ctx);
      throw error;
    }
  }

  /** Each message processed in turn; a failure is reported (`status: "failed"`), never thrown. */
  async processBatch(messages, ctx) {
    requireArray(messages, "messages");
    const results = [];
    for (const message of messages) {
      try {
        results.push(await this.process(message, ctx));
      } catch (error) {
        results.push({
          id: message?.id ?? null,
          type: message?.type ?? null,
          status: "failed",
          error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
        });
      }
    }
    return results;
  }

  /** An array (or `{messages: [...]}`) → processBatch; one envelope → process. */
  async execute(input, ctx) {
    if (Array.isArray(input)) return this.processBatch(input, ctx);
    if (isPlainObject(input) && Array.isArray(input.messages)) {
      return this.processBatch(input.messages, ctx);
    }
    return this.process(input, ctx);
  }

  #handlerFor(type) {
    const routes = requireObject(this.settings.routes ?? {}, "settings.routes", configError);
    if (Object.hasOwn(routes, type)) {
      const route = routes[type];
      const target = typeof route === "string"
        ? route
        : isPlainObject(route)
        ? route.call
        : undefined;
      return {
        kind: "call",
        target: requireString(target, `settings.routes[${JSON.stringify(type)}]`, configError),
      };
    }
    const name = `on${pascalCase(type)}`;
    if (!RESERVED_HANDLERS.has(name) && typeof this[name] === "function") {
      return { kind: "method", name };
    }
    if (typeof this.onMessage === "function") return { kind: "method", name: "onMessage" };
    const methods = [];
    for (
      let proto = Object.getPrototypeOf(this);
      proto && proto !== BaseMessageProcessor.prototype;
      proto = Object.getPrototypeOf(proto)
    ) {
      for (const key of Object.getOwnPropertyNames(proto)) {
        if (
          /^on[A-Z]/.test(key) && !RESERVED_HANDLERS.has(key) && typeof proto[key] === "function"
        ) methods.push(key);
      }
    }
    const known = [
      ...Object.keys(routes).map((t) => JSON.stringify(t)),
      ...methods.map((m) => `${m}()`),
    ];
    throw new KlfInputError(
      `message.type: no handler for "${type}" (expected a method ${name}() or a route; known: ${
        known.length === 0 ? "none" : known.join(", ")
      })`,
      { path: "message.type" },
    );
  }

  async #isSeen(key, ctx) {
    if (this.settings.dedupeStore === "kv") {
      return (await ctx.kv.get(`${this.settings.dedupePrefix}${key}`)) !== undefined;
    }
    if (!this.#seen.has(key)) return false;
    this.#seen.delete(key);
    this.#seen.set(key, true);
    return true;
  }

  async #markSeen(key, seen, ctx) {
    const s = this.settings;
    if (oneOf(s.dedupeStore, ["memory", "kv"], "settings.dedupeStore", configError) === "kv") {
      if (seen) await ctx.kv.put(`${s.dedupePrefix}${key}`, { at: ctx.now() });
      else await ctx.kv.delete(`${s.dedupePrefix}${key}`);
      return;
    }
    if (!seen) {
      this.#seen.delete(key);
      return;
    }
    this.#seen.set(key, true);
    const size = requireInteger(s.dedupeSize, "settings.dedupeSize", 1, configError);
    while (this.#seen.size > size) this.#seen.delete(this.#seen.keys().next().value);
  }
}

// ---- querystring, UTF-8, base64 ----------------------------------------------------------------

function decodeComponent(text, path) {
  try {
    return decodeURIComponent(text.replace(/\+/g, " "));
  } catch {
    throw new KlfInputError(`${path}: malformed percent-encoding in ${show(text)}`, { path });
  }
}

// "a=1&b=x%20y&a=2" → {a: ["1", "2"], b: "x y"}.
function parseQuery(text, path = "query") {
  const query = {};
  const body = text.startsWith("?") ? text.slice(1) : text;
  if (body === "") return query;
  for (const part of body.split("&")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const key = decodeComponent(eq < 0 ? part : part.slice(0, eq), path);
    const value = eq < 0 ? "" : decodeComponent(part.slice(eq + 1), path);
    if (FORBIDDEN_KEYS.has(key)) continue;
    if (!Object.hasOwn(query, key)) query[key] = value;
    else if (Array.isArray(query[key])) query[key].push(value);
    else query[key] = [query[key], value];
  }
  return query;
}

function formatQuery(value, path = "data") {
  requireObject(value, path);
  const parts = [];
  for (const key of Object.keys(value)) {
    const items = Array.isArray(value[key]) ? value[key] : [value[key]];
    for (const item of items) {
      if (item === undefined) continue;
      if (item !== null && typeof item === "object") {
        throw inputError(
          joinPath(path, key),
          "a string, number, boolean or an array of them",
          item,
        );
      }
      parts.push(
        `${encodeURIComponent(key)}=${encodeURIComponent(item === null ? "" : String(item))}`,
      );
    }
  }
  return parts.join("&");
}

function utf8Encode(text) {
  const bytes = [];
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      } else {
        c = 0xfffd;
      }
    } else if (c >= 0xd800 && c <= 0xdfff) {
      c = 0xfffd;
    }
    if (c < 0x80) bytes.push(c);
    else if (c < 0x800) bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else {bytes.push(
        0xf0 | (c >> 18),
        0x80 | ((c >> 12) & 63),
        0x80 | ((c >> 6) & 63),
        0x80 | (c & 63),
      );}
  }
  return bytes;
}

function utf8Decode(bytes, path) {
  const units = [];
  let out = "";
  const bad = (i) =>
    new KlfInputError(`${path}: not UTF-8 text (invalid byte at offset ${i})`, { path });
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    let c;
    let extra;
    if (b < 0x80) {
      c = b;
      extra = 0;
    } else if (b >= 0xc2 && b < 0xe0) {
      c = b & 31;
      extra = 1;
    } else if (b >= 0xe0 && b < 0xf0) {
      c = b & 15;
      extra = 2;
    } else if (b >= 0xf0 && b < 0xf5) {
      c = b & 7;
      extra = 3;
    } else {
      throw bad(i);
    }
    for (let k = 1; k <= extra; k++) {
      const next = bytes[i + k];
      if (next === undefined || (next & 0xc0) !== 0x80) throw bad(i + k);
      c = (c << 6) | (next & 63);
    }
    if (
      (extra === 2 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff)))
      || (extra === 3 && (c < 0x10000 || c > 0x10ffff))
    ) throw bad(i);
    if (c >= 0x10000) {
      c -= 0x10000;
      units.push(0xd800 + (c >> 10), 0xdc00 + (c & 1023));
    } else {
      units.push(c);
    }
    i += extra + 1;
    if (units.length >= 8192) {
      out += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  return out + String.fromCharCode(...units);
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

function bytesToBase64(bytes) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += `${B64[n >> 18]}${B64[(n >> 12) & 63]}==`;
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += `${B64[n >> 18]}${B64[(n >> 12) & 63]}${B64[(n >> 6) & 63]}=`;
  }
  return out;
}

// Standard or URL-safe alphabet, padding optional, whitespace ignored.
function base64ToBytes(text, path) {
  if (typeof text !== "string") throw inputError(path, "a base64 string", text);
  const clean = text.replace(/\s+/g, "");
  const body = clean.replace(/={1,2}$/, "");
  if (clean.length !== body.length && clean.length % 4 !== 0) {
    throw new KlfInputError(
      `${path}: not base64 (padding does not make the length a multiple of 4)`,
      { path },
    );
  }
  if (body.length % 4 === 1) {
    throw new KlfInputError(
      `${path}: not base64 (a length of ${body.length} characters is impossible)`,
      { path },
    );
  }
  const bytes = [];
  let buffer = 0;
  let bits = 0;
  for (let i = 0; i < body.length; i++) {
    const ch = body[i];
    let v = B64.indexOf(ch);
    if (ch === "-") v = 62;
    else if (ch === "_") v = 63;
    if (v < 0) {
      throw new KlfInputError(`${path}: not base64 (${JSON.stringify(ch)} at offset ${i})`, {
        path,
      });
    }
    buffer = (buffer << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((buffer >> bits) & 255);
    }
  }
  return bytes;
}

// ---- CSV (RFC 4180) ---------------------------------------------------------------------------

function csvOptions(options, path) {
  const o = options === undefined ? {} : requireObject(options, path);
  const delimiter = o.delimiter ?? ",";
  if (
    typeof delimiter !== "string" || delimiter.length !== 1 || delimiter === '"'
    || delimiter === "\n" || delimiter === "\r"
  ) {
    throw inputError(
      `${path}.delimiter`,
      "one character other than a quote or a line break",
      delimiter,
    );
  }
  return { ...o, delimiter };
}

function formatCSV(records, options) {
  const o = csvOptions(options, "options");
  requireArray(records, "records");
  const eol = o.eol ?? "\n";
  const header = o.header ?? true;
  let columns = o.columns;
  if (columns !== undefined) {
    requireArray(columns, "options.columns");
    columns.forEach((c, i) => requireString(c, `options.columns[${i}]`));
  } else if (records.length > 0 && !Array.isArray(records[0])) {
    const seen = new Set();
    records.forEach((record, i) => {
      requireObject(record, `records[${i}]`);
      for (const key of Object.keys(record)) seen.add(key);
    });
    columns = [...seen];
  }
  const quote = (value) => {
    let text;
    if (value === null || value === undefined) text = "";
    else if (typeof value === "string") text = value;
    else if (typeof value === "number") text = Number.isFinite(value) ? String(value) : "";
    else if (typeof value === "boolean") text = String(value);
    else text = JSON.stringify(value);
    const needs = text.includes(o.delimiter) || /["\r\n]/.test(text) || text !== text.trim();
    return needs ? `"${text.replace(/"/g, '""')}"` : text;
  };
  const lines = [];
  if (header && columns !== undefined) lines.push(columns.map(quote).join(o.delimiter));
  records.forEach((record, i) => {
    if (Array.isArray(record)) lines.push(record.map(quote).join(o.delimiter));
    else {
      requireObject(record, `records[${i}]`);
      lines.push(columns.map((column) => quote(getPath(record, [column]))).join(o.delimiter));
    }
  });
  return lines.length === 0 ? "" : lines.join(eol) + eol;
}

// Rows of fields with the line each row starts on.
function splitCSV(text, delimiter) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false; // inside quotes
  let wasQuoted = false; // the current field was quoted (and closed)
  let line = 1;
  let rowLine = 1;
  let quoteLine = 1;
  const fail = (at, why) => new KlfInputError(`CSV line ${at}: ${why}`, { path: "text" });
  const endRow = () => {
    row.push(field);
    rows.push({
      fields: row,
      line: rowLine,
      blank: row.length === 1 && field === "" && !wasQuoted,
    });
    row = [];
    field = "";
    wasQuoted = false;
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else {
          quoted = false;
          wasQuoted = true;
        }
      } else {
        if (c === "\n" || (c === "\r" && text[i + 1] !== "\n")) line++;
        field += c;
      }
      continue;
    }
    if (c === delimiter) {
      row.push(field);
      field = "";
      wasQuoted = false;
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      endRow();
      line++;
      rowLine = line;
    } else if (wasQuoted) {
      throw fail(
        line,
        `unexpected ${
          JSON.stringify(c)
        } after a closing quote (a field is either quoted as a whole or not at all)`,
      );
    } else if (c === '"') {
      if (field !== "") {
        throw fail(
          line,
          "a quote inside an unquoted field (quote the whole field and double the quote)",
        );
      }
      quoted = true;
      quoteLine = line;
    } else {
      field += c;
    }
  }
  if (quoted) throw fail(quoteLine, "a quoted field is never closed");
  if (field !== "" || row.length > 0 || wasQuoted) endRow();
  return rows;
}

function castCell(text, type, line, column) {
  const where = `CSV line ${line}, column ${JSON.stringify(String(column))}`;
  if (type === "string") return text;
  const trimmed = text.trim();
  if (trimmed === "") return null;
  if (type === "number") {
    if (!NUMBER_TEXT.test(trimmed)) {
      throw new KlfInputError(`${where}: expected a number, got ${show(text)}`, { path: "text" });
    }
    return Number(trimmed);
  }
  const lower = trimmed.toLowerCase();
  if (["true", "1", "yes"].includes(lower)) return true;
  if (["false", "0", "no"].includes(lower)) return false;
  throw new KlfInputError(
    `${where}: expected a boolean (true/false, 1/0, yes/no), got ${show(text)}`,
    { path: "text" },
  );
}

function parseCSV(text, options) {
  if (typeof text !== "string") throw inputError("text", "CSV text", text);
  const o = csvOptions(options, "options");
  const header = o.header ?? true;
  const types = o.types === undefined ? {} : requireObject(o.types, "options.types");
  for (const key of Object.keys(types)) {
    oneOf(types[key], ["number", "boolean", "string"], `options.types.${key}`);
  }
  const rows = splitCSV(text, o.delimiter).filter((row) =>
    !(row.blank && (o.skipEmptyLines ?? true))
  );
  const cell = (value) => (o.trim === true ? value.trim() : value);
  if (!header) {
    return rows.map((row) =>
      row.fields.map((
        value,
        i,
      ) => (Object.hasOwn(types, String(i)) ? castCell(value, types[i], row.line, i) : cell(value)))
    );
  }
  if (rows.length === 0) return [];
  const names = rows[0].fields.map((name) => name.trim());
  names.forEach((name, i) => {
    if (name === "") {
      throw new KlfInputError(
        `CSV line ${rows[0].line}: column ${i + 1} of the header has no name`,
        { path: "text" },
      );
    }
    if (names.indexOf(name) !== i) {
      throw new KlfInputError(`CSV line ${rows[0].line}: the header names column "${name}" twice`, {
        path: "text",
      });
    }
  });
  for (const key of Object.keys(types)) {
    if (!names.includes(key)) {
      throw new KlfInputError(
        `options.types.${key}: no such column (columns: ${names.join(", ")})`,
        { path: `options.types.${key}` },
      );
    }
  }
  return rows.slice(1).map((row) => {
    if (row.fields.length !== names.length) {
      throw new KlfInputError(
        `CSV line ${row.line}: ${row.fields.length} fields, expected ${names.length} (columns: ${
          names.join(", ")
        })`,
        { path: "text" },
      );
    }
    const record = {};
    names.forEach((name, i) => {
      if (FORBIDDEN_KEYS.has(name)) return;
      record[name] = Object.hasOwn(types, name)
        ? castCell(row.fields[i], types[name], row.line, name)
        : cell(row.fields[i]);
    });
    return record;
  });
}

// Where JSON text first goes wrong (QuickJS's own message does not always say), or null.
function jsonErrorOffset(text) {
  let i = 0;
  const fail = () => {
    throw i;
  };
  const space = () => {
    while (
      i < text.length
      && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")
    ) i++;
  };
  const string = () => {
    i++;
    for (;;) {
      if (i >= text.length) fail();
      const c = text[i];
      if (c === '"') {
        i++;
        return;
      }
      if (c === "\\") {
        const e = text[i + 1];
        if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) i += 6;
        else fail();
        continue;
      }
      if (c < " ") fail();
      i++;
    }
  };
  const number = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const value = () => {
    space();
    const c = text[i];
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i++;
      space();
      if (text[i] === close) {
        i++;
        return;
      }
      for (;;) {
        if (c === "{") {
          space();
          if (text[i] !== '"') fail();
          string();
          space();
          if (text[i] !== ":") fail();
          i++;
        }
        value();
        space();
        if (text[i] === ",") i++;
        else if (text[i] === close) {
          i++;
          return;
        } else fail();
      }
    }
    if (c === '"') return string();
    number.lastIndex = i;
    if (number.exec(text) !== null) {
      i = number.lastIndex;
      return;
    }
    for (const word of ["true", "false", "null"]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return;
      }
    }
    fail();
  };
  try {
    value();
    space();
    if (i < text.length) fail();
    return null;
  } catch (at) {
    return typeof at === "number" ? at : null;
  }
}

const FORMATS_SERIAL = ["json", "csv", "base64", "query"];

/** JSON, CSV (RFC 4180), base64 (UTF-8) and querystrings, in pure JavaScript. */
export class BaseSerializer extends BaseFunction {
  static defaults = { delimiter: ",", header: true, pretty: false, types: null };

  /** CSV text of records (objects, or arrays as raw rows). Options: columns, delimiter, header, eol. */
  toCSV(records, options = {}) {
    return formatCSV(records, {
      delimiter: this.settings.delimiter,
      header: this.settings.header,
      ...options,
    });
  }

  /** Records (header: true) or arrays of strings. Options: header, delimiter, types, trim, skipEmptyLines. */
  fromCSV(text, options = {}) {
    const defaults = { delimiter: this.settings.delimiter, header: this.settings.header };
    if (this.settings.types !== null) defaults.types = this.settings.types;
    return parseCSV(text, { ...defaults, ...options });
  }

  toJSON(value, options = {}) {
    let text;
    try {
      text = JSON.stringify(value, null, options.pretty ?? this.settings.pretty ? 2 : undefined);
    } catch (error) {
      throw new KlfInputError(`value: cannot be written as JSON (${error.message})`, {
        path: "value",
      });
    }
    if (text === undefined) throw inputError("value", "a JSON value", value);
    return text;
  }

  fromJSON(text) {
    if (typeof text !== "string") throw inputError("text", "JSON text", text);
    try {
      return JSON.parse(text);
    } catch (error) {
      const at = jsonErrorOffset(text);
      if (at === null) {
        throw new KlfInputError(`text: not valid JSON (${error.message})`, { path: "text" });
      }
      const before = text.slice(0, at);
      const line = before.split("\n").length;
      const column = at - before.lastIndexOf("\n");
      throw new KlfInputError(
        `text: not valid JSON at line ${line}, column ${column} (offset ${at}): ${error.message}`,
        { path: "text" },
      );
    }
  }

  /** Base64 of the UTF-8 bytes of `text`. */
  toBase64(text) {
    if (typeof text !== "string") throw inputError("text", "a string", text);
    return bytesToBase64(utf8Encode(text));
  }

  /** The UTF-8 text inside base64 (standard or URL-safe, padding optional). */
  fromBase64(b64) {
    return utf8Decode(base64ToBytes(b64, "text"), "text");
  }

  toQuery(value) {
    return formatQuery(value, "value");
  }

  fromQuery(text) {
    if (typeof text !== "string") throw inputError("text", "a querystring", text);
    return parseQuery(text, "text");
  }

  /** Text of `value` in `format` (json, csv, base64: a string or its JSON, query). */
  encode(value, format) {
    switch (oneOf(format, FORMATS_SERIAL, "format")) {
      case "json":
        return this.toJSON(value);
      case "csv":
        return this.toCSV(value);
      case "base64":
        return this.toBase64(typeof value === "string" ? value : this.toJSON(value));
      default:
        return this.toQuery(value);
    }
  }

  decode(text, format) {
    switch (oneOf(format, FORMATS_SERIAL, "format")) {
      case "json":
        return this.fromJSON(text);
      case "csv":
        return this.fromCSV(text);
      case "base64":
        return this.fromBase64(text);
      default:
        return this.fromQuery(text);
    }
  }

  /** `{op: "encode", to, data}` | `{op: "decode", from, data}` | `{op: "convert", from, to, data}` → `{data}`. */
  async execute(input) {
    requireObject(input, "input");
    const op = oneOf(input.op, ["encode", "decode", "convert"], "input.op");
    if (op === "encode") return { data: this.encode(input.data, input.to ?? input.format) };
    if (op === "decode") return { data: this.decode(input.data, input.from ?? input.format) };
    return { data: this.encode(this.decode(input.data, input.from), input.to) };
  }
}

/**
 * HTTP-shaped routing: `{method, path, headers?, query?, body?}` → `{status, headers, body}`
 * through settings.routes to methods of the class or to other functions.
 */
export class BaseProtocolHandler extends BaseFunction {
  static defaults = { routes: [] };

  #compiled = { source: null, routes: [] };

  async handle(request, ctx) {
    ctx = ctxOf(this, ctx);
    let parsed;
    try {
      parsed = this.#parseRequest(request);
    } catch (error) {
      if (!(error instanceof KlfInputError) || error instanceof ConfigError) throw error;
      return respond(400, { error: error.message });
    }
    const routes = this.#routes();
    const matching = [];
    for (const route of routes) {
      const params = matchSegments(route.segments, parsed.segments);
      if (params !== null) matching.push({ route, params });
    }
    if (matching.length === 0) {
      return respond(404, {
        error: `no route for ${parsed.method} ${parsed.path}`,
        paths: [...new Set(routes.map((r) => r.path))],
      });
    }
    const found = matching.find(({ route }) =>
      route.methods === null || route.methods.includes(parsed.method)
    );
    if (found === undefined) {
      const allow = [...new Set(matching.flatMap(({ route }) => route.methods))].join(", ");
      return respond(405, {
        error: `${parsed.method} is not allowed on ${parsed.path} (allowed: ${allow})`,
      }, { allow });
    }
    const req = {
      method: parsed.method,
      path: parsed.path,
      params: found.params,
      query: parsed.query,
      headers: parsed.headers,
      body: parsed.body,
    };
    let out;
    try {
      const handler = found.route.handler;
      out = typeof handler === "string"
        ? await this[handler](req, ctx)
        : await ctx.call(handler.call, req);
    } catch (error) {
      try {
        await this.onError(error, ctx);
      } catch (hookError) {
        ctx.log?.warn?.(
          `onError threw while handling an error: ${hookError?.message ?? hookError}`,
        );
      }
      return errorResponse(error);
    }
    return toResponse(out);
  }

  async execute(input, ctx) {
    return this.handle(input, ctx);
  }

  #parseRequest(request) {
    requireObject(request, "request");
    if (typeof request.method !== "string" || !/^[A-Za-z]+$/.test(request.method)) {
      throw inputError("request.method", 'an HTTP method such as "GET"', request.method);
    }
    if (typeof request.path !== "string" || !request.path.startsWith("/")) {
      throw inputError("request.path", 'a path starting with "/"', request.path);
    }
    const headers = {};
    if (request.headers !== undefined) {
      requireObject(request.headers, "request.headers");
      for (const key of Object.keys(request.headers)) {
        const value = request.headers[key];
        if (typeof value !== "string" && !Array.isArray(value)) {
          throw inputError(`request.headers.${key}`, "a string", value);
        }
        headers[key.toLowerCase()] = Array.isArray(value) ? value.join(", ") : value;
      }
    }
    const hash = request.path.indexOf("#");
    const raw = hash < 0 ? request.path : request.path.slice(0, hash);
    const mark = raw.indexOf("?");
    const path = mark < 0 ? raw : raw.slice(0, mark);
    let query = mark < 0 ? {} : parseQuery(raw.slice(mark + 1), "request.path");
    if (request.query !== undefined) {
      const given = typeof request.query === "string"
        ? parseQuery(request.query, "request.query")
        : requireObject(request.query, "request.query");
      query = { ...query, ...given };
    }
    const segments = path
      .split("/")
      .slice(1)
      .map((segment) => decodeComponent(segment.replace(/\+/g, "%2B"), "request.path"));
    if (segments.length > 1 && segments.at(-1) === "") segments.pop();
    return {
      method: request.method.toUpperCase(),
      path,
      segments,
      query,
      headers,
      body: request.body ?? null,
    };
  }

  #routes() {
    const source = this.settings.routes;
    if (this.#compiled.source === source) return this.#compiled.routes;
    requireArray(source, "settings.routes", configError);
    const routes = source.map((route, i) => {
      const at = `settings.routes[${i}]`;
      requireObject(route, at, configError);
      const method = route.method ?? "*";
      const list = Array.isArray(method) ? method : [method];
      list.forEach((m, j) => {
        if (typeof m !== "string" || !/^([A-Za-z]+|\*)$/.test(m)) {
          throw configError(
            Array.isArray(method) ? `${at}.method[${j}]` : `${at}.method`,
            'an HTTP method such as "GET" or "*"',
            m,
          );
        }
      });
      const methods = list.includes("*") ? null : list.map((m) => m.toUpperCase());
      if (typeof route.path !== "string" || !route.path.startsWith("/")) {
        throw configError(`${at}.path`, 'a path pattern such as "/orders/:id"', route.path);
      }
      const segments = route.path.split("/").slice(1);
      if (segments.length > 1 && segments.at(-1) === "") segments.pop();
      segments.forEach((segment, j) => {
        if (segment === "*" && j !== segments.length - 1) {
          throw new ConfigError(`${at}.path: "*" may only end a path`, { path: `${at}.path` });
        }
        if (segment.startsWith(":") && !/^:[A-Za-z_][A-Za-z0-9_]*$/.test(segment)) {
          throw new ConfigError(`${at}.path: ${JSON.stringify(segment)} is not a parameter name`, {
            path: `${at}.path`,
          });
        }
      });
      const handler = route.handler;
      if (typeof handler === "string") {
        if (typeof this[handler] !== "function") {
          throw new ConfigError(
            `${at}.handler: the class has no method ${JSON.stringify(handler)}`,
            { path: `${at}.handler` },
          );
        }
      } else if (
        !isPlainObject(handler) || typeof handler.call !== "string" || handler.call === ""
      ) {
        throw configError(`${at}.handler`, 'a method name or {call: "function-name"}', handler);
      }
      return { path: route.path, segments, methods, handler };
    });
    this.#compiled = { source, routes };
    return routes;
  }
}

// Params of a path that matches the pattern, or null.
function matchSegments(pattern, segments) {
  const params = {};
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i];
    if (p === "*") {
      params["*"] = segments.slice(i).join("/");
      return params;
    }
    if (i >= segments.length) return null;
    if (p.startsWith(":")) {
      if (segments[i] === "") return null;
      params[p.slice(1)] = segments[i];
    } else if (p !== segments[i]) {
      return null;
    }
  }
  return pattern.length === segments.length ? params : null;
}

function respond(status, body, headers = {}) {
  const out = { status, headers: { ...headers }, body: body ?? null };
  if (body !== undefined && body !== null) out.headers["content-type"] ??= "application/json";
  return out;
}

// A result shaped `{status, headers?, body?}` (numeric status, nothing else) is the response;
// anything else is the body of a 200 (204 when nothing).
function toResponse(out) {
  if (
    isPlainObject(out)
    && Number.isInteger(out.status)
    && out.status >= 100
    && out.status <= 599
    && Object.keys(out).every((key) => key === "status" || key === "headers" || key === "body")
  ) {
    const headers = {};
    if (isPlainObject(out.headers)) {
      for (const key of Object.keys(out.headers)) {
        headers[key.toLowerCase()] = String(out.headers[key]);
      }
    }
    return respond(out.status, out.body, headers);
  }
  return out === undefined ? respond(204, null) : respond(200, out);
}

function errorResponse(error) {
  const name = error?.name ?? "Error";
  const message = error instanceof Error ? error.message : String(error);
  let status = 500;
  if (Number.isInteger(error?.status) && error.status >= 400 && error.status <= 599) {
    status = error.status;
  } else if (name === "InputError") status = 400;
  const headers = {};
  if (status === 429 && Number.isFinite(error?.retryAfterMs)) {
    headers["retry-after"] = String(Math.ceil(error.retryAfterMs / 1000));
  }
  return respond(status, { error: message, name }, headers);
}

/**
 * Calls another function with policy: a token-bucket rate limit and retries of failed host
 * calls. (No HTTP: the sandbox has no network capability.)
 */
/** An external service answered with an error status (after the connector's retries). */
export class UpstreamError extends Error {
  constructor(message, details = {}) {
    super(message);
    this.name = "UpstreamError";
    this.status = details.status;
    this.attempts = details.attempts;
    this.body = details.body;
  }
}

/** The connector's circuit breaker is open: the service failed repeatedly; retry after `retryAfterMs`. */
export class CircuitOpenError extends Error {
  constructor(message, retryAfterMs) {
    super(message);
    this.name = "CircuitOpen";
    this.status = 503;
    this.retryAfterMs = retryAfterMs;
  }
}

// `Retry-After` as milliseconds: delta-seconds or an HTTP date; null when absent or unreadable.
function retryAfterMs(headers, now) {
  const value = headers?.["retry-after"];
  if (typeof value !== "string" || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/**
 * Connects to another function (`send`, settings.target) or to an external HTTP service
 * (`request`, settings.http: `{baseUrl, headers?, timeoutMs?}` over `ctx.http`, which needs the
 * `http` capability and an [http] allow rule): retries with jittered exponential backoff that
 * really waits (`ctx.sleep`) and honours `Retry-After`, a circuit breaker (settings.breaker:
 * `{failures, resetMs}`) and a token-bucket rate limit (settings.rateLimit).
 */
export class BaseConnector extends BaseFunction {
  static defaults = {
    target: null,
    http: null,
    retries: 2,
    backoffMs: 50,
    maxBackoffMs: 10000,
    retryOn: [429, 500, 502, 503, 504],
    breaker: { failures: 5, resetMs: 30000 },
    rateLimit: null,
    waitForToken: false,
    maxWaitMs: 100,
  };

  #bucket = null;
  #breaker = { failures: 0, openUntil: 0 };

  /** `{result, attempts}`; the last error (with `.attempts`) when every attempt failed. */
  async send(input, target, ctx) {
    ctx = ctxOf(this, ctx);
    const s = this.settings;
    const to = target ?? s.target;
    if (typeof to !== "string" || to === "") {
      throw target === undefined || target === null
        ? configError("settings.target", "the name of the function to call", to)
        : inputError("target", "a function name", to);
    }
    const retries = requireInteger(s.retries, "settings.retries", 0, configError);
    await this.#acquire(ctx);
    for (let attempt = 1;; attempt++) {
      try {
        return { result: await ctx.call(to, input), attempts: attempt };
      } catch (error) {
        const retryable = error instanceof HostError && error.name !== "CapabilityDenied";
        if (!retryable || attempt > retries) {
          if (error !== null && typeof error === "object") error.attempts = attempt;
          throw error;
        }
        const wait = this.#backoff(attempt, null);
        ctx.log?.debug?.(
          `${to} failed (${error.message}); attempt ${attempt + 1} of ${retries + 1} in ${wait} ms`,
        );
        await this.#wait(ctx, wait);
      }
    }
  }

  /**
   * An HTTP request to settings.http.baseUrl + `path` (or an absolute URL) through `ctx.http`:
   * `options` as `ctx.http.fetch` takes them (method, headers, body, json, timeoutMs). Retries
   * statuses in settings.retryOn and network failures, waiting `Retry-After` when the service
   * sends it, else a jittered exponential backoff; the breaker opens after settings.breaker.failures
   * failed attempts in a row. `{status, headers, body, json?, attempts}`; an error status at the
   * end throws `UpstreamError` (`status`, `attempts`), an open breaker `CircuitOpen`.
   */
  async request(path, options, ctx) {
    ctx = ctxOf(this, ctx);
    const s = this.settings;
    const http = s.http;
    requireObject(http, "settings.http", configError);
    const url = /^https?:\/\//.test(String(path ?? ""))
      ? String(path)
      : `${requireString(http.baseUrl, "settings.http.baseUrl", configError)}${path ?? ""}`;
    const retries = requireInteger(s.retries, "settings.retries", 0, configError);
    const retryOn = Array.isArray(s.retryOn) ? s.retryOn : [];
    const request = {
      ...(options ?? {}),
      headers: { ...(http.headers ?? {}), ...(options?.headers ?? {}) },
    };
    if (request.timeoutMs === undefined && http.timeoutMs !== undefined) {
      request.timeoutMs = http.timeoutMs;
    }
    this.#checkBreaker(ctx);
    await this.#acquire(ctx);
    for (let attempt = 1;; attempt++) {
      let response = null;
      let failure = null;
      try {
        response = await ctx.http.fetch(url, request);
      } catch (error) {
        // Refusals and bad requests are the caller's to fix; a retry would be refused again.
        if (!(error instanceof HostError) || ["CapabilityDenied", "SecretError"].includes(error.name)) {
          throw error;
        }
        failure = error;
      }
      if (response !== null && !retryOn.includes(response.status)) {
        if (response.status < 500) this.#breaker.failures = 0;
        if (response.status >= 400) {
          if (response.status >= 500) this.#failed(ctx);
          throw new UpstreamError(`${url} answered ${response.status}`, {
            status: response.status,
            attempts: attempt,
            body: response.body,
          });
        }
        return { ...response, attempts: attempt };
      }
      this.#failed(ctx);
      const breakerOpen = this.#breaker.openUntil > ctx.now();
      if (attempt > retries || breakerOpen) {
        if (failure !== null) {
          failure.attempts = attempt;
          throw failure;
        }
        throw new UpstreamError(`${url} answered ${response.status} after ${attempt} attempts`, {
          status: response.status,
          attempts: attempt,
          body: response.body,
        });
      }
      const wait = this.#backoff(attempt, response && retryAfterMs(response.headers, ctx.now()));
      ctx.log?.debug?.(
        `${url} ${failure ? `failed (${failure.message})` : `answered ${response.status}`}; ` +
          `attempt ${attempt + 1} of ${retries + 1} in ${wait} ms`,
      );
      await this.#wait(ctx, wait);
    }
  }

  /** `closed`, `open` (with `retryAfterMs`) or `half-open`, and the failures in a row. */
  breakerState(ctx) {
    const now = ctxOf(this, ctx).now();
    const b = this.#breaker;
    if (b.openUntil > now) return { state: "open", failures: b.failures, retryAfterMs: b.openUntil - now };
    return { state: b.openUntil > 0 ? "half-open" : "closed", failures: b.failures };
  }

  // The wait before attempt `attempt + 1`: Retry-After when given (capped by maxBackoffMs), else
  // backoffMs · 2^(attempt-1) with "equal jitter" (half fixed, half random).
  #backoff(attempt, retryAfter) {
    const s = this.settings;
    const cap = requireNumber(s.maxBackoffMs, "settings.maxBackoffMs", configError);
    if (retryAfter !== null && retryAfter !== undefined) return Math.min(cap, retryAfter);
    const base = Math.min(cap, requireNumber(s.backoffMs, "settings.backoffMs", configError) * 2 ** (attempt - 1));
    return Math.round(base / 2 + Math.random() * (base / 2));
  }

  async #wait(ctx, ms) {
    if (ms > 0 && typeof ctx.sleep === "function") await ctx.sleep(ms);
  }

  #failed(ctx) {
    const b = this.#breaker;
    b.failures += 1;
    const limit = this.settings.breaker;
    if (limit === null || limit === undefined) return;
    const failures = requireInteger(limit.failures, "settings.breaker.failures", 1, configError);
    if (b.failures >= failures) {
      const resetMs = requireNumber(limit.resetMs, "settings.breaker.resetMs", configError);
      b.openUntil = ctx.now() + resetMs;
      ctx.log?.warn?.(`circuit breaker open for ${resetMs} ms after ${b.failures} failures in a row`);
    }
  }

  #checkBreaker(ctx) {
    const b = this.#breaker;
    const now = ctx.now();
    if (b.openUntil > now) {
      throw new CircuitOpenError(
        `circuit breaker open after ${b.failures} failures in a row; retry after ${b.openUntil - now} ms`,
        b.openUntil - now,
      );
    }
    // Half-open: one more failure opens it again at once.
    if (b.openUntil > 0) {
      const limit = this.settings.breaker;
      b.failures = Math.max(0, (limit?.failures ?? 1) - 1);
      b.openUntil = 0;
    }
  }

  /** Tokens left in the bucket now (Infinity without a rate limit). */
  available(ctx) {
    const limit = this.#limit();
    if (limit === null) return Infinity;
    return this.#refill(limit, ctxOf(this, ctx).now()).tokens;
  }

  async execute(input, ctx) {
    if (this.settings.http !== null && this.settings.http !== undefined && this.settings.target === null) {
      requireObject(input, "input");
      const { path, ...options } = input;
      return this.request(path ?? "", options, ctx);
    }
    return this.send(input, undefined, ctx);
  }

  #limit() {
    const limit = this.settings.rateLimit;
    if (limit === null || limit === undefined) return null;
    requireObject(limit, "settings.rateLimit", configError);
    const perSecond = requireNumber(limit.perSecond, "settings.rateLimit.perSecond", configError);
    if (perSecond <= 0) {
      throw configError("settings.rateLimit.perSecond", "a number > 0", perSecond);
    }
    const burst = limit.burst === undefined
      ? Math.max(1, perSecond)
      : requireNumber(limit.burst, "settings.rateLimit.burst", configError);
    if (burst < 1) throw configError("settings.rateLimit.burst", "a number ≥ 1", burst);
    return { perSecond, burst };
  }

  #refill(limit, now) {
    const bucket = this.#bucket ?? { tokens: limit.burst, at: now };
    const elapsed = Math.max(0, now - bucket.at);
    bucket.tokens = Math.min(limit.burst, bucket.tokens + (elapsed * limit.perSecond) / 1000);
    bucket.at = now;
    this.#bucket = bucket;
    return bucket;
  }

  // Takes a token, waits (ctx.sleep) up to maxWaitMs when waitForToken, or throws.
  async #acquire(ctx) {
    const limit = this.#limit();
    if (limit === null) return;
    const bucket = this.#refill(limit, ctx.now());
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return;
    }
    const waitMs = Math.ceil(((1 - bucket.tokens) * 1000) / limit.perSecond);
    const maxWait = requireNumber(this.settings.maxWaitMs, "settings.maxWaitMs", configError);
    if (this.settings.waitForToken === true && waitMs <= maxWait) {
      await this.#wait(ctx, waitMs);
      this.#refill(limit, ctx.now()).tokens -= 1;
      return;
    }
    throw new RateLimitedError(
      `rate limit of ${limit.perSecond}/s (burst ${limit.burst}) reached; retry after ${waitMs} ms`,
      waitMs,
    );
  }
}
