// ---- Security: BaseAuthenticator, BaseAuthorizer, BaseEncryptor, BaseValidator ---------------

// A header's value, names compared case-insensitively; the first of several values.
function headerValue(headers, name) {
  if (!isPlainObject(headers)) return undefined;
  const wanted = name.toLowerCase();
  for (const key of Object.keys(headers)) {
    if (key.toLowerCase() === wanted) {
      const value = headers[key];
      return Array.isArray(value) ? value[0] : value;
    }
  }
  return undefined;
}

// `*` matches any run of characters (including none); everything else matches itself. Linear
// backtracking, no regular expressions, so no pattern can be made to take exponential time.
function globMatch(pattern, text) {
  let p = 0;
  let t = 0;
  let star = -1;
  let mark = 0;
  while (t < text.length) {
    if (p < pattern.length && pattern[p] === "*") {
      star = p++;
      mark = t;
    } else if (p < pattern.length && pattern[p] === text[t]) {
      p++;
      t++;
    } else if (star !== -1) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === "*") p++;
  return p === pattern.length;
}

/**
 * Verifies credentials: bearer tokens or API keys (looked up in a secret of `subject:token`
 * lines) or HMAC-signed requests (`sha256(secret, "${timestamp}.${body}")`, hex). Comparisons are
 * constant-time through ctx.crypto. Needs the "secret" and "crypto" capabilities.
 */
export class BaseAuthenticator extends BaseFunction {
  static defaults = {
    scheme: "bearer",
    tokensSecret: null,
    hmacSecret: null,
    hmacSubject: null,
    toleranceMs: 300000,
    header: "authorization",
    signatureHeader: "x-signature",
    timestampHeader: "x-timestamp",
    rejectWithResult: false,
  };

  #tokens = { text: null, entries: [] };

  /** `{authenticated: true, subject, scheme}`, or throws AuthError (`code` says why). */
  async authenticate(request = {}, ctx) {
    ctx = ctxOf(this, ctx);
    requireObject(request, "input");
    if (request.headers !== undefined) requireObject(request.headers, "input.headers");
    const scheme = oneOf(
      this.settings.scheme,
      ["bearer", "api-key", "hmac"],
      "settings.scheme",
      configError,
    );
    if (scheme === "hmac") return this.#verifyHmac(request, ctx);
    const token = this.#extractToken(request, scheme);
    const entries = await this.#loadTokens(ctx);
    let subject = null;
    // Every entry is compared, so the time taken does not say which one matched.
    for (const entry of entries) {
      if (ctx.crypto.equal(token, entry.token) && subject === null) subject = entry.subject;
    }
    if (subject === null) {
      throw new AuthError(
        `unknown ${scheme === "bearer" ? "bearer token" : "API key"}`,
        "unknown_token",
      );
    }
    return { authenticated: true, subject, scheme };
  }

  /** The hex signature a client sends for `body` at `timestamp` (for clients and tests). */
  async sign(body, timestamp, ctx) {
    ctx = ctxOf(this, ctx);
    const key = await ctx.secret(
      secretName(this.settings.hmacSecret, "settings.hmacSecret", "the HMAC key"),
    );
    return ctx.crypto.hmac("sha256", key, `${timestamp}.${bodyText(body)}`);
  }

  async execute(input, ctx) {
    try {
      return await this.authenticate(input ?? {}, ctx);
    } catch (error) {
      if (error instanceof AuthError && this.settings.rejectWithResult === true) {
        return { authenticated: false, reason: error.message, code: error.code };
      }
      throw error;
    }
  }

  #extractToken(request, scheme) {
    if (request.token !== undefined) {
      if (typeof request.token !== "string" || request.token === "") {
        throw inputError("input.token", "a non-empty string", request.token);
      }
      return request.token;
    }
    const header = requireString(this.settings.header, "settings.header", configError);
    const value = headerValue(request.headers, header);
    if (value === undefined || value === "") {
      throw new AuthError(
        `missing credentials: no token and no "${header}" header`,
        "missing_token",
      );
    }
    if (typeof value !== "string") throw inputError(`input.headers.${header}`, "a string", value);
    if (scheme === "api-key") return value.trim();
    const match = /^Bearer\s+(\S+)\s*$/i.exec(value);
    if (match === null) {
      throw new AuthError(`the "${header}" header is not "Bearer <token>"`, "missing_token");
    }
    return match[1];
  }

  async #loadTokens(ctx) {
    const name = secretName(
      this.settings.tokensSecret,
      "settings.tokensSecret",
      "subject:token lines",
    );
    const text = await ctx.secret(name);
    if (text === this.#tokens.text) return this.#tokens.entries;
    const entries = [];
    String(text)
      .split(/\r?\n/)
      .forEach((line, i) => {
        const trimmed = line.trim();
        if (trimmed === "" || trimmed.startsWith("#")) return;
        const colon = trimmed.indexOf(":");
        if (colon <= 0 || colon === trimmed.length - 1) {
          // The line itself is never shown: it may hold a token.
          throw new ConfigError(`secret "${name}" line ${i + 1} is not "subject:token"`, {
            path: "settings.tokensSecret",
          });
        }
        entries.push({
          subject: trimmed.slice(0, colon).trim(),
          token: trimmed.slice(colon + 1).trim(),
        });
      });
    this.#tokens = { text, entries };
    return entries;
  }

  async #verifyHmac(request, ctx) {
    const s = this.settings;
    const name = secretName(s.hmacSecret, "settings.hmacSecret", "the HMAC key");
    let signature = request.signature ?? headerValue(request.headers, s.signatureHeader);
    const timestamp = request.timestamp ?? headerValue(request.headers, s.timestampHeader);
    if (signature === undefined || signature === "") {
      throw new AuthError(
        `missing signature: no signature and no "${s.signatureHeader}" header`,
        "missing_signature",
      );
    }
    if (timestamp === undefined || timestamp === "") {
      throw new AuthError(
        `missing timestamp: no timestamp and no "${s.timestampHeader}" header`,
        "missing_timestamp",
      );
    }
    if (typeof signature !== "string") {
      throw inputError("input.signature", "a hex string", signature);
    }
    signature = signature.replace(/^sha256=/i, "");
    const at = typeof timestamp === "number"
      ? timestamp
      : /^\d+$/.test(String(timestamp))
      ? Number(timestamp)
      : NaN;
    if (!Number.isFinite(at)) {
      throw new AuthError(
        `bad timestamp ${show(timestamp)}: expected milliseconds since the epoch`,
        "bad_timestamp",
      );
    }
    const skew = Math.abs(ctx.now() - at);
    const tolerance = requireNumber(s.toleranceMs, "settings.toleranceMs", configError);
    if (skew > tolerance) {
      throw new AuthError(
        `stale timestamp: ${
          Math.round(skew)
        } ms away from this node's clock, at most ${tolerance} ms allowed`,
        "stale_timestamp",
      );
    }
    if (!/^[0-9a-fA-F]+$/.test(signature)) {
      throw new AuthError("bad signature: not a hex string", "bad_signature");
    }
    const key = await ctx.secret(name);
    const ok = ctx.crypto.hmacVerify(
      "sha256",
      key,
      `${timestamp}.${bodyText(request.body)}`,
      signature.toLowerCase(),
    );
    if (!ok) {
      throw new AuthError(
        "bad signature: it does not match the body and timestamp",
        "bad_signature",
      );
    }
    return { authenticated: true, subject: s.hmacSubject ?? name, scheme: "hmac" };
  }
}

function secretName(name, path, holding) {
  if (typeof name !== "string" || name === "") {
    throw configError(
      path,
      `the name of a secret holding ${holding} (declared in \`secrets\` in klf.toml)`,
      name,
    );
  }
  return name;
}

// What is signed: the body as sent (a string), or its JSON text.
function bodyText(body) {
  if (body === undefined || body === null) return "";
  return typeof body === "string" ? body : JSON.stringify(body);
}

/**
 * Policy decisions: `{subject, roles?, action, resource, context?}` against policies of `*`
 * globs with optional conditions. Deny overrides allow; nothing matching → `defaultEffect`.
 */
export class BaseAuthorizer extends BaseFunction {
  static defaults = { policies: [], defaultEffect: "deny" };

  #compiled = { source: null, policies: [] };

  /** `{allowed, effect, policy: id|null, reason}`. */
  authorize(request) {
    requireObject(request, "input");
    const subject = requireString(request.subject, "input.subject");
    const action = requireString(request.action, "input.action");
    const resource = requireString(request.resource, "input.resource");
    const roles = request.roles === undefined ? [] : requireArray(request.roles, "input.roles");
    roles.forEach((role, i) => requireString(role, `input.roles[${i}]`));
    if (request.context !== undefined) requireObject(request.context, "input.context");
    const principals = [subject, ...roles.map((role) => `role:${role}`)];
    const facts = { subject, roles, action, resource, context: request.context ?? {} };
    let allow = null;
    for (const policy of this.#policies()) {
      if (!policy.subjects.some((p) => principals.some((who) => globMatch(p, who)))) continue;
      if (!policy.actions.some((p) => globMatch(p, action))) continue;
      if (!policy.resources.some((p) => globMatch(p, resource))) continue;
      if (policy.when !== null && !policy.when(facts)) continue;
      if (policy.effect === "deny") {
        return {
          allowed: false,
          effect: "deny",
          policy: policy.id,
          reason: `denied by policy "${policy.id}"`,
        };
      }
      allow ??= policy;
    }
    if (allow !== null) {
      return {
        allowed: true,
        effect: "allow",
        policy: allow.id,
        reason: `allowed by policy "${allow.id}"`,
      };
    }
    const effect = oneOf(
      this.settings.defaultEffect,
      ["allow", "deny"],
      "settings.defaultEffect",
      configError,
    );
    return {
      allowed: effect === "allow",
      effect,
      policy: null,
      reason: `no policy matched; the default is ${effect}`,
    };
  }

  /** Like authorize, but throws AuthError (status 403) unless allowed. */
  assertAllowed(request) {
    const decision = this.authorize(request);
    if (!decision.allowed) {
      throw new AuthError(
        `forbidden: ${request.subject} may not ${request.action} ${request.resource} (${decision.reason})`,
        "forbidden",
        403,
      );
    }
    return decision;
  }

  async execute(input) {
    return this.authorize(input);
  }

  #policies() {
    const source = this.settings.policies;
    if (this.#compiled.source === source) return this.#compiled.policies;
    requireArray(source, "settings.policies", configError);
    const ids = new Set();
    const policies = source.map((policy, i) => {
      const at = `settings.policies[${i}]`;
      requireObject(policy, at, configError);
      const id = policy.id === undefined
        ? `#${i}`
        : requireString(policy.id, `${at}.id`, configError);
      if (ids.has(id)) {
        throw new ConfigError(`${at}.id: "${id}" is used by two policies`, { path: `${at}.id` });
      }
      ids.add(id);
      const globs = (key) => {
        const value = policy[key] ?? ["*"];
        const list = typeof value === "string"
          ? [value]
          : requireArray(value, `${at}.${key}`, configError);
        list.forEach((glob, j) => requireString(glob, `${at}.${key}[${j}]`, configError));
        return list;
      };
      return {
        id,
        effect: oneOf(policy.effect, ["allow", "deny"], `${at}.effect`, configError),
        subjects: globs("subjects"),
        actions: globs("actions"),
        resources: globs("resources"),
        when: policy.when === undefined ? null : compileCondition(policy.when, `${at}.when`),
      };
    });
    this.#compiled = { source, policies };
    return policies;
  }
}

const ENVELOPE_KEYS = ["alg", "nonce", "ciphertext"];

function isEnvelope(value) {
  return isPlainObject(value) && ENVELOPE_KEYS.every((key) => typeof value[key] === "string");
}

/**
 * Authenticated encryption through the host (ctx.crypto) with a key held in a secret: whole
 * texts, or chosen fields of a record (each bound to its field path as associated data).
 * Needs the "crypto" and "secret" capabilities.
 */
export class BaseEncryptor extends BaseFunction {
  static defaults = { keySecret: null, fields: [], alg: "chacha20-poly1305", aadField: null };

  /** `{alg, nonce, ciphertext}` (base64) for `text`, bound to `aad` if given. */
  async encrypt(text, aad, ctx) {
    ctx = ctxOf(this, ctx);
    if (typeof text !== "string") throw inputError("text", "a string", text);
    const options = { secret: this.#keySecret(), alg: this.settings.alg };
    if (aad !== undefined && aad !== null) options.aad = String(aad);
    try {
      return ctx.crypto.encrypt(text, options);
    } catch (error) {
      throw asCryptoError(error, "cannot encrypt");
    }
  }

  /** The text inside an envelope; a tampered envelope, wrong key or wrong aad → CryptoError. */
  async decrypt(envelope, aad, ctx) {
    ctx = ctxOf(this, ctx);
    if (!isEnvelope(envelope)) {
      throw inputError("envelope", "an encrypted envelope {alg, nonce, ciphertext}", envelope);
    }
    const options = { secret: this.#keySecret() };
    if (aad !== undefined && aad !== null) options.aad = String(aad);
    try {
      return ctx.crypto.decrypt({
        alg: envelope.alg,
        nonce: envelope.nonce,
        ciphertext: envelope.ciphertext,
      }, options);
    } catch (error) {
      throw asCryptoError(
        error,
        "cannot decrypt (tampered ciphertext, wrong key or wrong associated data)",
      );
    }
  }

  /**
   * A copy of `record` with each field in `fields` replaced by an envelope (values that are not
   * strings are encrypted as JSON). `{record, meta: {encrypted: [paths], skipped: [paths]}}`.
   */
  async encryptFields(record, fields, ctx) {
    requireObject(record, "record");
    const paths = this.#fields(fields);
    const out = cloneData(record);
    const meta = { encrypted: [], skipped: [] };
    for (const path of paths) {
      const value = getPath(out, path);
      if (value === undefined) {
        meta.skipped.push(path);
        continue;
      }
      const text = typeof value === "string" ? value : JSON.stringify(value);
      const envelope = await this.encrypt(text, this.#aad(record, path), ctx);
      setPath(out, path, { ...envelope, encoding: typeof value === "string" ? "text" : "json" });
      meta.encrypted.push(path);
    }
    return { record: out, meta };
  }

  /** The reverse of encryptFields: `{record, meta: {decrypted: [paths], skipped: [paths]}}`. */
  async decryptFields(record, fields, ctx) {
    requireObject(record, "record");
    const paths = this.#fields(fields);
    const out = cloneData(record);
    const meta = { decrypted: [], skipped: [] };
    for (const path of paths) {
      const envelope = getPath(out, path);
      if (envelope === undefined) {
        meta.skipped.push(path);
        continue;
      }
      if (!isEnvelope(envelope)) {
        throw inputError(
          `record.${path}`,
          "an encrypted envelope {alg, nonce, ciphertext}",
          envelope,
        );
      }
      let text;
      try {
        text = await this.decrypt(envelope, this.#aad(out, path), ctx);
      } catch (error) {
        if (error instanceof CryptoError) {
          throw new CryptoError(`record.${path}: ${error.message}`, {
            path: `record.${path}`,
            cause: error.cause,
          });
        }
        throw error;
      }
      setPath(out, path, envelope.encoding === "json" ? JSON.parse(text) : text);
      meta.decrypted.push(path);
    }
    return { record: out, meta };
  }

  /** `{op: "encrypt"|"decrypt", record, fields?}` → `{record, meta}`. */
  async execute(input, ctx) {
    requireObject(input, "input");
    const op = oneOf(input.op, ["encrypt", "decrypt"], "input.op");
    requireObject(input.record, "input.record");
    return op === "encrypt"
      ? this.encryptFields(input.record, input.fields, ctx)
      : this.decryptFields(input.record, input.fields, ctx);
  }

  #keySecret() {
    return secretName(this.settings.keySecret, "settings.keySecret", "the key");
  }

  #fields(fields) {
    const list = fields ?? this.settings.fields;
    const path = fields === undefined ? "settings.fields" : "fields";
    requireArray(list, path);
    list.forEach((field, i) => parsePath(field, `${path}[${i}]`));
    return list;
  }

  // The field's path, and the record's `aadField` value if set: an envelope moved to another
  // field (or record) does not decrypt.
  #aad(record, path) {
    const field = this.settings.aadField;
    if (field === null || field === undefined) return String(path);
    const bound = getPath(record, field);
    if (bound === undefined) {
      throw inputError(
        `record.${field}`,
        "a value (settings.aadField binds envelopes to it)",
        bound,
      );
    }
    return `${path}|${typeof bound === "string" ? bound : JSON.stringify(bound)}`;
  }
}

// The host's CryptoError, said in terms of what was being done; any other failure (a denied
// capability, an undeclared or unset secret) goes on as it is, typed.
function asCryptoError(error, what) {
  if (error instanceof HostError && error.name === "CryptoError") {
    return new CryptoError(`${what}: ${error.message}`, { cause: error });
  }
  return error;
}

/** JSON-schema checks of the input (settings.schema) or of any value against any schema. */
export class BaseValidator extends BaseFunction {
  static defaults = { schema: null };

  /** `{valid, errors: [{path, message}]}`. */
  check(value, schema) {
    return validateSchema(value, this.#schema(schema), {
      root: "input",
      schemaPath: schema === undefined ? "settings.schema" : "schema",
    });
  }

  /** Returns `value` if valid, else throws KlfInputError listing the errors (`.errors`). */
  assert(value, schema) {
    const result = this.check(value, schema);
    if (!result.valid) {
      throw new KlfInputError(`invalid input: ${summarizeErrors(result.errors)}`, {
        path: result.errors[0].path,
        errors: result.errors,
      });
    }
    return value;
  }

  async execute(input) {
    return this.check(input);
  }

  #schema(schema) {
    const chosen = schema ?? this.settings.schema;
    if (chosen === null || chosen === undefined) {
      throw new ConfigError(
        "settings.schema: expected a JSON schema, got nothing (set it in [config] or pass one)",
        { path: "settings.schema" },
      );
    }
    return chosen;
  }
}
