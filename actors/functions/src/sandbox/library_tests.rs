//! The base library `klf:base` (design §11): every class run as a real function in a real
//! [`Instance`], for its normal behaviour (computed values asserted) and for bad input (a clear
//! error naming the field, and the instance keeps serving).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::test_host::{FakeHost, model_reply};
use super::*;
use klf_model::ModelRequest;

/// Lets a test call any method: `{"$call": "name", "args": [...]}`; anything else goes to the
/// class's own `execute`.
const CALL_HOOK: &str = "
  async execute(input, ctx) {
    if (input !== null && typeof input === 'object' && typeof input.$call === 'string') {
      return await this[input.$call](...(input.args ?? []));
    }
    return await super.execute(input, ctx);
  }
";

/// The helpers every function may import, which the tests reach as `klf.<name>`.
const HELPER_NAMES: &str =
    "KlfInputError, getPath, setPath, deletePath, validateSchema, evaluateCondition";

/// A function whose default export extends `class` with `body` (and [`CALL_HOOK`]). It imports
/// by name, as functions do, so its `klf:base` holds only the library part of `class`.
fn source(class: &str, body: &str) -> String {
    format!(
        "import {{ {class}, {HELPER_NAMES} }} from \"klf:base\";\n\
         const klf = {{ {HELPER_NAMES} }};\n\
         export default class Subject extends {class} {{\n{CALL_HOOK}\n{body}\n}}\n"
    )
}

fn code(source: String, config: Value) -> FunctionCode {
    FunctionCode {
        name: "subject".to_string(),
        version: "1.0.0".to_string(),
        kind: "test".to_string(),
        entry: "main.js".to_string(),
        source,
        config,
        dependencies: ["dep", "pricing", "audit"].map(String::from).to_vec(),
        capabilities: ["call", "kv", "log"].map(String::from).to_vec(),
        secrets: Vec::new(),
    }
}

fn limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(5),
        max_output_bytes: 256 * 1024,
    }
}

async fn start_code(code: FunctionCode, host: Arc<FakeHost>) -> Instance {
    match Instance::start(code, limits(), host).await {
        Ok(instance) => instance,
        Err(error) => panic!("the function does not start: {error}"),
    }
}

/// An instance of `class` (with `body`) configured with `config`, on `host`.
async fn start_on(class: &str, body: &str, config: Value, host: Arc<FakeHost>) -> Instance {
    start_code(code(source(class, body), config), host).await
}

/// Like [`start_on`], with more capabilities granted and secrets declared.
async fn start_granted(
    class: &str,
    body: &str,
    config: Value,
    host: Arc<FakeHost>,
    capabilities: &[&str],
    secrets: &[&str],
) -> Instance {
    let mut code = code(source(class, body), config);
    code.capabilities
        .extend(capabilities.iter().map(|c| c.to_string()));
    code.secrets = secrets.iter().map(|s| s.to_string()).collect();
    start_code(code, host).await
}

/// The host's calls as `(target, input)`.
fn sent(host: &FakeHost) -> Vec<(String, Value)> {
    host.calls()
        .into_iter()
        .map(|call| (call.target, call.input))
        .collect()
}

async fn start(class: &str, body: &str, config: Value) -> Instance {
    start_on(class, body, config, FakeHost::echo()).await
}

fn meta() -> CallMeta {
    CallMeta::with_timeout(Duration::from_secs(5))
}

/// The result of a call that must succeed.
async fn ok(instance: &Instance, input: Value) -> Value {
    match instance.execute(input.clone(), meta()).await {
        Ok(output) => output,
        Err(error) => panic!("{input} failed: {error}"),
    }
}

/// `{"$call": method, "args": args}`.
async fn call(instance: &Instance, method: &str, args: Value) -> Value {
    ok(instance, json!({ "$call": method, "args": args })).await
}

/// The error of a call that must fail, as the caller reads it.
async fn fails(instance: &Instance, input: Value) -> String {
    match instance.execute(input.clone(), meta()).await {
        Ok(output) => panic!("{input} should have failed, got {output}"),
        Err(SandboxError::User { message, .. }) => message,
        Err(other) => other.to_string(),
    }
}

/// Asserts that the call fails with a message containing every one of `parts`.
async fn fails_with(instance: &Instance, input: Value, parts: &[&str]) {
    let message = fails(instance, input).await;
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should contain {part:?}"
        );
    }
}

async fn call_fails_with(instance: &Instance, method: &str, args: Value, parts: &[&str]) {
    fails_with(instance, json!({ "$call": method, "args": args }), parts).await;
}

fn num(value: &Value) -> f64 {
    match value.as_f64() {
        Some(n) => n,
        None => panic!("{value} is not a number"),
    }
}

fn close(value: &Value, expected: f64) {
    let n = num(value);
    assert!(
        (n - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{n} should be {expected}"
    );
}

fn close_all(value: &Value, expected: &[f64]) {
    let Some(items) = value.as_array() else {
        panic!("{value} is not an array");
    };
    assert_eq!(items.len(), expected.len(), "{value} vs {expected:?}");
    for (item, want) in items.iter().zip(expected) {
        close(item, *want);
    }
}

// ---- BaseFunction settings -----------------------------------------------------------------

#[tokio::test]
async fn settings_merge_class_defaults_and_config_deeply() {
    let source = "import { BaseDataProcessor } from \"klf:base\";
        class Middle extends BaseDataProcessor {
          static defaults = { limits: { low: 1, high: 9 }, tags: ['a', 'b'], name: 'middle' };
        }
        export default class Leaf extends Middle {
          static defaults = { limits: { high: 5 }, extra: true };
          async execute(input) {
            const before = JSON.stringify(this.settings);
            this.settings.limits.low = 100;
            return { settings: JSON.parse(before), middle: Middle.defaults };
          }
        }";
    let instance = start_code(
        code(
            source.to_string(),
            json!({ "limits": { "low": 2 }, "tags": ["z"], "steps": [{ "limit": 1 }] }),
        ),
        FakeHost::echo(),
    )
    .await;
    let output = ok(&instance, json!(null)).await;
    assert_eq!(
        output["settings"],
        json!({ "steps": [{ "limit": 1 }], "limits": { "low": 2, "high": 5 },
                "tags": ["z"], "name": "middle", "extra": true })
    );
    // Changing this.settings changed no class's defaults.
    assert_eq!(
        output["middle"],
        json!({ "limits": { "low": 1, "high": 9 }, "tags": ["a", "b"], "name": "middle" })
    );
}

// ---- helpers: paths, schema, conditions ------------------------------------------------------

const HELPERS: &str = "
  get(obj, path) { return klf.getPath(obj, path) ?? null; }
  set(obj, path, value) { return klf.setPath(obj, path, value); }
  schema(value, schema) { return klf.validateSchema(value, schema); }
  cond(condition, facts) { return klf.evaluateCondition(condition, facts); }
";

#[tokio::test]
async fn paths_read_and_write_nested_values() {
    let i = start("BaseValidator", HELPERS, json!({})).await;
    let doc = json!({ "a": { "b": [1, { "c": 5 }], "x y": 2 } });
    assert_eq!(call(&i, "get", json!([doc, "a.b[1].c"])).await, json!(5));
    assert_eq!(call(&i, "get", json!([doc, "a[\"x y\"]"])).await, json!(2));
    assert_eq!(call(&i, "get", json!([doc, "a.b.1.c"])).await, json!(5));
    assert_eq!(call(&i, "get", json!([doc, "a.zz.c"])).await, json!(null));
    assert_eq!(
        call(&i, "set", json!([{ "k": 1 }, "a.list[1].v", 7])).await,
        json!({ "k": 1, "a": { "list": [null, { "v": 7 }] } })
    );
    call_fails_with(
        &i,
        "get",
        json!([doc, "a[b"]),
        &["InputError", "\"a[b\" is not a valid path"],
    )
    .await;
    call_fails_with(
        &i,
        "set",
        json!([{}, "__proto__.polluted", 1]),
        &["\"__proto__\" is not allowed"],
    )
    .await;
    call_fails_with(
        &i,
        "set",
        json!([{ "a": 3 }, "a.b", 1]),
        &["a: is 3, cannot set \"b\" inside it"],
    )
    .await;
    assert_eq!(call(&i, "get", json!([doc, "a.b[0]"])).await, json!(1));
}

#[tokio::test]
async fn validate_schema_covers_the_subset() {
    let i = start("BaseValidator", HELPERS, json!({})).await;
    let schema = json!({
        "type": "object",
        "required": ["id", "email", "when"],
        "additionalProperties": false,
        "properties": {
            "id": { "type": "string", "format": "uuid" },
            "email": { "type": "string", "format": "email" },
            "when": { "type": "string", "format": "date-time" },
            "day": { "type": "string", "format": "date" },
            "site": { "type": "string", "format": "uri" },
            "name": { "type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z😀]+$" },
            "qty": { "type": "integer", "minimum": 1, "exclusiveMaximum": 10 },
            "price": { "type": ["number", "null"], "exclusiveMinimum": 0 },
            "kind": { "enum": ["a", "b"] },
            "v": { "const": 2 },
            "tags": { "type": "array", "items": { "type": "string" }, "minItems": 1,
                      "maxItems": 2, "uniqueItems": true },
            "pair": { "type": "array", "items": [{ "type": "number" }, { "type": "string" }] },
            "alt": { "anyOf": [{ "type": "number" }, { "type": "string", "minLength": 3 }] },
            "one": { "oneOf": [{ "minimum": 0 }, { "maximum": 10 }] },
            "no": { "not": { "type": "null" } },
            "both": { "allOf": [{ "minimum": 1 }, { "maximum": 2 }] }
        }
    });
    let good = json!({
        "id": "123e4567-e89b-12d3-a456-426614174000", "email": "ann@example.org",
        "when": "2024-02-29T12:30:00.5+01:00", "day": "2024-02-29", "site": "https://x.org/a?b",
        "name": "a😀c", "qty": 9, "price": null, "kind": "b", "v": 2, "tags": ["x", "y"],
        "pair": [1, "one"], "alt": "abc", "one": 20, "no": 0, "both": 2
    });
    assert_eq!(
        call(&i, "schema", json!([good, schema])).await,
        json!({ "valid": true, "errors": [] })
    );
    let bad = json!({
        "id": "nope", "email": "ann@", "when": "2023-02-29T12:30:00Z", "day": "2024-13-01",
        "site": "not a uri", "name": "abcd", "qty": 10, "price": 0, "kind": "c", "v": 3,
        "tags": ["x", "x", 3], "pair": ["1"], "alt": "ab", "one": 5, "no": null, "both": 3,
        "stray": true
    });
    let result = call(&i, "schema", json!([bad, schema])).await;
    assert_eq!(result["valid"], json!(false));
    let errors: Vec<String> = result["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["path"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let expected = [
        "input.id expected a UUID, got \"nope\"",
        "input.email expected an email address",
        "input.when expected a date-time",
        "input.day expected a date (YYYY-MM-DD)",
        "input.site expected a URI",
        "input.name expected at most 3 characters, got 4",
        "input.qty expected a number < 10, got 10",
        "input.price expected a number > 0, got 0",
        "input.kind expected one of \"a\", \"b\", got \"c\"",
        "input.v expected 2, got 3",
        "input.tags expected at most 2 items, got 3",
        "input.tags expected unique items, but items 0 and 1 are equal",
        "input.tags[2] expected string, got 3",
        "input.pair[0] expected number, got \"1\"",
        "input.alt does not match any of the 2 schemas in anyOf",
        "input.one matches 2 of the schemas in oneOf, expected exactly one",
        "input.no must not match the schema in not",
        "input.both expected a number ≤ 2, got 3",
        "input.stray is not allowed",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    // A malformed schema is a ConfigError naming the schema path.
    call_fails_with(
        &i,
        "schema",
        json!([1, { "properties": { "a": { "type": "strnig" } }, "type": "object" }]),
        &[
            "ConfigError",
            "schema.properties.a.type: expected one of",
            "got \"strnig\"",
        ],
    )
    .await;
    call_fails_with(
        &i,
        "schema",
        json!([{ "a": "x" }, { "properties": { "a": { "pattern": "(" } } }]),
        &[
            "schema.properties.a.pattern",
            "not a valid regular expression",
        ],
    )
    .await;
    assert_eq!(
        call(&i, "schema", json!([3, { "type": "integer" }])).await["valid"],
        json!(true)
    );
}

#[tokio::test]
async fn conditions_support_every_operator() {
    let i = start("BaseValidator", HELPERS, json!({})).await;
    let facts = json!({ "n": 5, "s": "hello", "tags": ["a", "b"], "obj": { "k": [1] },
                        "limit": 4, "nothing": null });
    let cases = [
        (json!({ "field": "n", "op": "eq", "value": 5 }), true),
        (
            json!({ "field": "obj", "op": "eq", "value": { "k": [1] } }),
            true,
        ),
        (json!({ "field": "n", "op": "ne", "value": 5 }), false),
        (json!({ "field": "n", "op": "gt", "value": 4 }), true),
        (json!({ "field": "n", "op": "gte", "value": 5 }), true),
        (json!({ "field": "n", "op": "lt", "value": 5 }), false),
        (json!({ "field": "n", "op": "lte", "value": 5 }), true),
        (json!({ "field": "s", "op": "gt", "value": 3 }), false),
        (json!({ "field": "s", "op": "lt", "value": "world" }), true),
        (json!({ "field": "n", "op": "in", "value": [1, 5] }), true),
        (json!({ "field": "n", "op": "nin", "value": [1, 5] }), false),
        (
            json!({ "field": "s", "op": "contains", "value": "ell" }),
            true,
        ),
        (
            json!({ "field": "tags", "op": "contains", "value": "b" }),
            true,
        ),
        (
            json!({ "field": "s", "op": "matches", "value": "^HEL", "flags": "i" }),
            true,
        ),
        (json!({ "field": "nothing", "op": "exists" }), false),
        (
            json!({ "field": "missing", "op": "exists", "value": false }),
            true,
        ),
        (
            json!({ "field": "n", "op": "gt", "valueFrom": "limit" }),
            true,
        ),
        (
            json!({ "all": [{ "field": "n", "value": 5 }, { "not": { "field": "s", "value": "x" } }] }),
            true,
        ),
        (
            json!({ "any": [{ "field": "n", "value": 1 }, { "field": "n", "value": 2 }] }),
            false,
        ),
        (json!({ "all": [] }), true),
        (json!(true), true),
    ];
    for (condition, expected) in cases {
        assert_eq!(
            call(&i, "cond", json!([condition, facts])).await,
            json!(expected),
            "{condition}"
        );
    }
    // Mistakes are found even in branches these facts never reach.
    call_fails_with(
        &i,
        "cond",
        json!([{ "any": [{ "field": "n", "value": 5 }, { "field": "n", "op": "between", "value": 1 }] }, facts]),
        &["condition.any[1].op: unknown operator \"between\"", "expected one of eq, ne"],
    )
    .await;
    call_fails_with(
        &i,
        "cond",
        json!([{ "field": "n", "op": "in", "value": 3 }, facts]),
        &["condition.value: expected an array for \"in\""],
    )
    .await;
    call_fails_with(
        &i,
        "cond",
        json!([{ "all": [], "any": [] }, facts]),
        &["exactly one of"],
    )
    .await;
    call_fails_with(
        &i,
        "cond",
        json!([{ "field": "s", "op": "matches", "value": "(" }, facts]),
        &["not a valid regular expression"],
    )
    .await;
    assert_eq!(
        call(&i, "cond", json!([{ "field": "n", "value": 5 }, facts])).await,
        json!(true)
    );
}

// ---- Security ----------------------------------------------------------------------------------

#[tokio::test]
async fn validator_checks_and_asserts_against_the_configured_schema() {
    let config = json!({ "schema": {
        "type": "object", "required": ["name", "age"],
        "properties": { "name": { "type": "string" }, "age": { "type": "integer", "minimum": 0 } }
    }});
    let i = start("BaseValidator", "", config).await;
    assert_eq!(
        ok(&i, json!({ "name": "Ann", "age": 3 })).await,
        json!({ "valid": true, "errors": [] })
    );
    assert_eq!(
        ok(&i, json!({ "age": -1 })).await,
        json!({ "valid": false, "errors": [
            { "path": "input.name", "message": "is required" },
            { "path": "input.age", "message": "expected a number ≥ 0, got -1" }
        ]})
    );
    call_fails_with(
        &i,
        "assert",
        json!([{ "name": 5, "age": 1.5 }]),
        &["InputError: invalid input: input.age: expected integer, got 1.5; input.name: expected string, got 5"],
    )
    .await;
    assert_eq!(
        call(&i, "assert", json!([{ "name": "Bo", "age": 1 }])).await,
        json!({ "name": "Bo", "age": 1 })
    );
    // A schema given to check wins over the configured one.
    assert_eq!(
        call(&i, "check", json!(["x", { "type": "string" }])).await["valid"],
        json!(true)
    );
    let unconfigured = start("BaseValidator", "", json!({})).await;
    fails_with(
        &unconfigured,
        json!({}),
        &["ConfigError", "settings.schema: expected a JSON schema"],
    )
    .await;
}

#[tokio::test]
async fn authorizer_denies_over_allows_and_matches_roles_globs_and_conditions() {
    let config = json!({ "policies": [
        { "id": "readers", "effect": "allow", "subjects": ["role:reader"], "actions": ["read", "list"], "resources": ["doc:*"] },
        { "id": "no-secrets", "effect": "deny", "subjects": ["*"], "actions": ["*"], "resources": ["doc:secret-*"] },
        { "id": "owners", "effect": "allow", "subjects": ["user:*"], "actions": ["write"], "resources": ["doc:*"],
          "when": { "field": "context.owner", "op": "eq", "valueFrom": "subject" } },
        { "id": "admins", "effect": "allow", "subjects": ["role:admin"], "actions": ["*"], "resources": ["*"] }
    ]});
    let i = start("BaseAuthorizer", "", config).await;
    assert_eq!(
        ok(&i, json!({ "subject": "user:ann", "roles": ["reader"], "action": "read", "resource": "doc:1" })).await,
        json!({ "allowed": true, "effect": "allow", "policy": "readers", "reason": "allowed by policy \"readers\"" })
    );
    // Deny overrides allow, even for an admin.
    assert_eq!(
        ok(&i, json!({ "subject": "user:ann", "roles": ["reader", "admin"], "action": "read", "resource": "doc:secret-plan" })).await,
        json!({ "allowed": false, "effect": "deny", "policy": "no-secrets", "reason": "denied by policy \"no-secrets\"" })
    );
    let owner = ok(&i, json!({ "subject": "user:ann", "action": "write", "resource": "doc:1", "context": { "owner": "user:ann" } })).await;
    assert_eq!(
        (owner["allowed"].clone(), owner["policy"].clone()),
        (json!(true), json!("owners"))
    );
    assert_eq!(
        ok(&i, json!({ "subject": "user:bob", "action": "write", "resource": "doc:1", "context": { "owner": "user:ann" } })).await,
        json!({ "allowed": false, "effect": "deny", "policy": null, "reason": "no policy matched; the default is deny" })
    );
    call_fails_with(
        &i,
        "assertAllowed",
        json!([{ "subject": "user:bob", "action": "delete", "resource": "doc:1" }]),
        &["AuthError: forbidden: user:bob may not delete doc:1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "subject": "user:ann", "resource": "doc:1" }),
        &["InputError: input.action: expected a non-empty string, got nothing"],
    )
    .await;
    fails_with(
        &i,
        json!({ "subject": "a", "action": "read", "resource": "doc:1", "roles": "reader" }),
        &["input.roles: expected an array"],
    )
    .await;
    assert_eq!(
        ok(
            &i,
            json!({ "subject": "x", "roles": ["admin"], "action": "purge", "resource": "db" })
        )
        .await["allowed"],
        json!(true)
    );
    let open = start("BaseAuthorizer", "", json!({ "defaultEffect": "allow" })).await;
    assert_eq!(
        ok(
            &open,
            json!({ "subject": "a", "action": "b", "resource": "c" })
        )
        .await["allowed"],
        json!(true)
    );
    let broken = start(
        "BaseAuthorizer",
        "",
        json!({ "policies": [{ "id": "p", "effect": "permit" }] }),
    )
    .await;
    fails_with(&broken, json!({ "subject": "a", "action": "b", "resource": "c" }), &["ConfigError: settings.policies[0].effect: expected one of \"allow\", \"deny\", got \"permit\""]).await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[tokio::test]
async fn authenticator_checks_bearer_tokens_and_api_keys_from_a_secret() {
    let host = FakeHost::builder()
        .secret(
            "api-tokens",
            "# subject:token\nalice:tok-alice-123\n\n bob : tok-bob-456 \n",
        )
        .secret("broken-tokens", "alice:ok\nno-colon-here\n")
        .build();
    let grants = ["crypto", "secret"];
    let secrets = ["api-tokens", "broken-tokens"];
    let bearer = start_granted(
        "BaseAuthenticator",
        "",
        json!({ "tokensSecret": "api-tokens" }),
        host.clone(),
        &grants,
        &secrets,
    )
    .await;
    assert_eq!(
        ok(
            &bearer,
            json!({ "headers": { "Authorization": "Bearer tok-alice-123" } })
        )
        .await,
        json!({ "authenticated": true, "subject": "alice", "scheme": "bearer" })
    );
    assert_eq!(
        ok(&bearer, json!({ "token": "tok-bob-456" })).await["subject"],
        json!("bob")
    );
    fails_with(
        &bearer,
        json!({ "headers": { "authorization": "Bearer tok-mallory" } }),
        &["AuthError: unknown bearer token"],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "headers": {} }),
        &["AuthError: missing credentials: no token and no \"authorization\" header"],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "headers": { "authorization": "Basic YTpi" } }),
        &["AuthError: the \"authorization\" header is not \"Bearer <token>\""],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "token": 42 }),
        &["InputError: input.token: expected a non-empty string, got 42"],
    )
    .await;
    fails_with(
        &bearer,
        json!({ "headers": "Bearer x" }),
        &["input.headers: expected an object"],
    )
    .await;
    assert_eq!(
        ok(&bearer, json!({ "token": "tok-alice-123" })).await["subject"],
        json!("alice")
    );

    let soft = start_granted(
        "BaseAuthenticator",
        "",
        json!({ "tokensSecret": "api-tokens", "rejectWithResult": true }),
        host.clone(),
        &grants,
        &secrets,
    )
    .await;
    assert_eq!(
        ok(&soft, json!({ "token": "nope" })).await,
        json!({ "authenticated": false, "reason": "unknown bearer token", "code": "unknown_token" })
    );
    let keys = start_granted(
        "BaseAuthenticator",
        "",
        json!({ "scheme": "api-key", "header": "X-Api-Key", "tokensSecret": "api-tokens" }),
        host.clone(),
        &grants,
        &secrets,
    )
    .await;
    assert_eq!(
        ok(&keys, json!({ "headers": { "x-api-key": "tok-bob-456" } })).await,
        json!({ "authenticated": true, "subject": "bob", "scheme": "api-key" })
    );
    fails_with(
        &keys,
        json!({ "headers": { "x-api-key": "tok-bob-457" } }),
        &["AuthError: unknown API key"],
    )
    .await;
    // A malformed secret is named by line, never shown.
    let broken = start_granted(
        "BaseAuthenticator",
        "",
        json!({ "tokensSecret": "broken-tokens" }),
        host.clone(),
        &grants,
        &secrets,
    )
    .await;
    let message = fails(&broken, json!({ "token": "ok" })).await;
    assert!(
        message.contains("ConfigError: secret \"broken-tokens\" line 2 is not \"subject:token\""),
        "{message}"
    );
    assert!(!message.contains("no-colon-here"), "{message}");
    // Without the grants, the host's refusal reaches the caller as it is.
    let ungranted = start_on(
        "BaseAuthenticator",
        "",
        json!({ "tokensSecret": "api-tokens" }),
        host,
    )
    .await;
    match ungranted
        .execute(json!({ "token": "tok-bob-456" }), meta())
        .await
    {
        Err(SandboxError::CapabilityDenied { capability, .. }) => assert_eq!(capability, "secret"),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn authenticator_verifies_hmac_signatures_and_timestamps() {
    let host = FakeHost::builder()
        .secret("webhook-key", "whsec_test_key")
        .build();
    let config = json!({ "scheme": "hmac", "hmacSecret": "webhook-key", "hmacSubject": "billing-webhook", "toleranceMs": 60000 });
    let i = start_granted(
        "BaseAuthenticator",
        "",
        config,
        host,
        &["crypto", "secret"],
        &["webhook-key"],
    )
    .await;
    let body = "{\"event\":\"paid\",\"amount\":12}";
    let at = now_ms();
    let signature = match crypto::hmac_hex("sha256", "whsec_test_key", &format!("{at}.{body}")) {
        Ok(signature) => signature,
        Err(error) => panic!("{error}"),
    };
    let signed = |body: &str, at: u64, signature: &str| json!({ "headers": { "X-Signature": format!("sha256={signature}"), "X-Timestamp": at.to_string() }, "body": body });
    assert_eq!(
        ok(&i, signed(body, at, &signature)).await,
        json!({ "authenticated": true, "subject": "billing-webhook", "scheme": "hmac" })
    );
    // The same from explicit fields, and the class computes the same signature.
    assert_eq!(
        ok(
            &i,
            json!({ "signature": signature, "timestamp": at, "body": body })
        )
        .await["authenticated"],
        json!(true)
    );
    assert_eq!(call(&i, "sign", json!([body, at])).await, json!(signature));
    fails_with(
        &i,
        signed("{\"event\":\"paid\",\"amount\":1200}", at, &signature),
        &["AuthError: bad signature: it does not match the body and timestamp"],
    )
    .await;
    fails_with(&i, signed(body, at + 1, &signature), &["bad signature"]).await;
    fails_with(
        &i,
        signed(body, at, "zz"),
        &["bad signature: not a hex string"],
    )
    .await;
    let stale = at - 120_000;
    let old = match crypto::hmac_hex("sha256", "whsec_test_key", &format!("{stale}.{body}")) {
        Ok(signature) => signature,
        Err(error) => panic!("{error}"),
    };
    fails_with(
        &i,
        signed(body, stale, &old),
        &["AuthError: stale timestamp:", "at most 60000 ms allowed"],
    )
    .await;
    fails_with(
        &i,
        json!({ "headers": { "x-timestamp": at.to_string() }, "body": body }),
        &["AuthError: missing signature"],
    )
    .await;
    fails_with(
        &i,
        json!({ "signature": signature, "body": body }),
        &["AuthError: missing timestamp"],
    )
    .await;
    fails_with(
        &i,
        json!({ "signature": signature, "timestamp": "yesterday", "body": body }),
        &["AuthError: bad timestamp \"yesterday\""],
    )
    .await;
    assert_eq!(
        ok(&i, signed(body, at, &signature)).await["authenticated"],
        json!(true)
    );
}

#[tokio::test]
async fn encryptor_seals_fields_bound_to_their_place() {
    let host = FakeHost::builder()
        .secret("field-key", "correct horse battery staple")
        .secret("other-key", "another passphrase")
        .build();
    let grants = ["crypto", "secret"];
    let config = json!({ "keySecret": "field-key", "fields": ["ssn", "card.number", "tags", "notes"], "aadField": "id" });
    let i = start_granted(
        "BaseEncryptor",
        "",
        config,
        host.clone(),
        &grants,
        &["field-key"],
    )
    .await;
    let record = json!({ "id": "c1", "name": "Ann", "ssn": "123-45-6789", "card": { "number": "4111 1111", "exp": "12/30" }, "tags": ["vip", 3] });
    let sealed = ok(&i, json!({ "op": "encrypt", "record": record })).await;
    assert_eq!(
        sealed["meta"],
        json!({ "encrypted": ["ssn", "card.number", "tags"], "skipped": ["notes"] })
    );
    let out = &sealed["record"];
    assert_eq!(
        (out["name"].clone(), out["card"]["exp"].clone()),
        (json!("Ann"), json!("12/30"))
    );
    for (field, encoding) in [
        (&out["ssn"], "text"),
        (&out["card"]["number"], "text"),
        (&out["tags"], "json"),
    ] {
        assert_eq!(field["alg"], json!("chacha20-poly1305"));
        assert_eq!(field["encoding"], json!(encoding));
        assert!(
            field["nonce"].is_string() && field["ciphertext"].is_string(),
            "{field}"
        );
        assert!(
            !field.to_string().contains("4111") && !field.to_string().contains("123-45"),
            "{field}"
        );
    }
    let opened = ok(&i, json!({ "op": "decrypt", "record": out })).await;
    assert_eq!(
        opened,
        json!({ "record": record, "meta": { "decrypted": ["ssn", "card.number", "tags"], "skipped": ["notes"] } })
    );
    // Tampered, moved to another field, or moved to another record: none decrypts.
    let mut tampered = out.clone();
    let ciphertext = tampered["ssn"]["ciphertext"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let flipped = if ciphertext.starts_with('A') {
        ciphertext.replacen('A', "B", 1)
    } else {
        format!("A{}", &ciphertext[1..])
    };
    tampered["ssn"]["ciphertext"] = json!(flipped);
    fails_with(&i, json!({ "op": "decrypt", "record": tampered }), &["CryptoError: record.ssn: cannot decrypt (tampered ciphertext, wrong key or wrong associated data)"]).await;
    let mut moved = out.clone();
    moved["card"]["number"] = out["ssn"].clone();
    fails_with(
        &i,
        json!({ "op": "decrypt", "record": moved }),
        &["CryptoError: record.card.number: cannot decrypt"],
    )
    .await;
    let mut other_record = out.clone();
    other_record["id"] = json!("c2");
    fails_with(
        &i,
        json!({ "op": "decrypt", "record": other_record }),
        &["CryptoError: record.ssn"],
    )
    .await;
    // Another key does not open it either.
    let wrong = start_granted(
        "BaseEncryptor",
        "",
        json!({ "keySecret": "other-key", "fields": ["ssn"], "aadField": "id" }),
        host.clone(),
        &grants,
        &["other-key"],
    )
    .await;
    fails_with(
        &wrong,
        json!({ "op": "decrypt", "record": out }),
        &["CryptoError: record.ssn: cannot decrypt"],
    )
    .await;
    // Texts, with and without associated data.
    let envelope = call(&i, "encrypt", json!(["hello", "order-7"])).await;
    assert_eq!(
        call(&i, "decrypt", json!([envelope, "order-7"])).await,
        json!("hello")
    );
    call_fails_with(
        &i,
        "decrypt",
        json!([envelope, "order-8"]),
        &["CryptoError: cannot decrypt"],
    )
    .await;
    call_fails_with(&i, "decrypt", json!([{ "alg": "x" }]), &["InputError: envelope: expected an encrypted envelope {alg, nonce, ciphertext}, got an object"]).await;
    call_fails_with(
        &i,
        "encrypt",
        json!([42]),
        &["InputError: text: expected a string, got 42"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "decrypt", "record": { "id": "c1", "ssn": "plain" } }),
        &["record.ssn: expected an encrypted envelope"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "encrypt", "record": [] }),
        &["input.record: expected an object"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "encrypt", "record": { "ssn": "1" } }),
        &["record.id: expected a value (settings.aadField binds envelopes to it)"],
    )
    .await;
    assert_eq!(
        ok(&i, json!({ "op": "decrypt", "record": out })).await["record"],
        record
    );
    // An undeclared secret is the host's refusal, typed, not a CryptoError.
    let undeclared = start_granted(
        "BaseEncryptor",
        "",
        json!({ "keySecret": "field-key" }),
        host.clone(),
        &grants,
        &[],
    )
    .await;
    match undeclared
        .execute(json!({ "$call": "encrypt", "args": ["x"] }), meta())
        .await
    {
        Err(SandboxError::CapabilityDenied { detail, .. }) => {
            assert!(detail.contains("not declared"), "{detail}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let unconfigured = start_granted("BaseEncryptor", "", json!({}), host, &grants, &[]).await;
    call_fails_with(
        &unconfigured,
        "encrypt",
        json!(["x"]),
        &["ConfigError: settings.keySecret: expected the name of a secret"],
    )
    .await;
}

// ---- Communication -------------------------------------------------------------------------------

#[tokio::test]
async fn message_processor_dispatches_dedupes_and_routes() {
    let host = FakeHost::echo();
    let body = "
      async onOrderCreated(payload, message) {
        if (payload.fail) throw new Error('cannot take order ' + message.id);
        return { total: payload.qty * payload.price };
      }";
    let i = start_on(
        "BaseMessageProcessor",
        body,
        json!({ "routes": { "invoice.paid": "audit" }, "dedupeSize": 2 }),
        host.clone(),
    )
    .await;
    let order =
        json!({ "id": "m1", "type": "order.created", "payload": { "qty": 2, "price": 3.5 } });
    assert_eq!(
        ok(&i, order.clone()).await,
        json!({ "id": "m1", "type": "order.created", "status": "handled", "result": { "total": 7 } })
    );
    assert_eq!(
        ok(&i, order.clone()).await,
        json!({ "id": "m1", "type": "order.created", "status": "duplicate" })
    );
    let paid = json!({ "id": 7, "type": "invoice.paid", "payload": { "n": 1 } });
    assert_eq!(
        ok(&i, paid.clone()).await,
        json!({ "id": 7, "type": "invoice.paid", "status": "handled", "result": { "target": "audit", "input": paid } })
    );
    assert_eq!(sent(&host), vec![("audit".to_string(), paid)]);
    // The LRU holds two ids: m1 has been pushed out by 7 and m9.
    ok(
        &i,
        json!({ "id": "m9", "type": "order.created", "payload": { "qty": 1, "price": 1 } }),
    )
    .await;
    assert_eq!(ok(&i, order.clone()).await["status"], json!("handled"));
    // A failed message is not remembered, so its retry is handled.
    let failing = json!({ "id": "f1", "type": "order.created", "payload": { "fail": true } });
    fails_with(&i, failing, &["cannot take order f1"]).await;
    assert_eq!(
        ok(
            &i,
            json!({ "id": "f1", "type": "order.created", "payload": { "qty": 1, "price": 2 } })
        )
        .await["status"],
        json!("handled")
    );
    // A batch reports each message and never aborts.
    let batch = ok(
        &i,
        json!({ "messages": [
            { "id": "b1", "type": "order.created", "payload": { "qty": 1, "price": 1 } },
            { "id": "b2", "type": "order.cancelled", "payload": {} },
            { "type": "order.created" },
            { "id": "b1", "type": "order.created", "payload": { "qty": 1, "price": 1 } }
        ]}),
    )
    .await;
    let statuses: Vec<&Value> = batch
        .as_array()
        .map(|b| b.iter().map(|r| &r["status"]).collect())
        .unwrap_or_default();
    assert_eq!(
        statuses,
        [
            &json!("handled"),
            &json!("failed"),
            &json!("failed"),
            &json!("duplicate")
        ]
    );
    let unknown = batch[1]["error"].as_str().unwrap_or_default();
    assert!(
        unknown.contains("no handler for \"order.cancelled\"")
            && unknown.contains("onOrderCancelled()")
            && unknown.contains("known: \"invoice.paid\", onOrderCreated()"),
        "{unknown}"
    );
    assert!(
        batch[2]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("message.id: expected a string or a number, got nothing")
    );
    fails_with(
        &i,
        json!({ "id": "x", "type": "refund.issued" }),
        &["InputError: message.type: no handler for \"refund.issued\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "id": "x", "type": "" }),
        &["message.type: expected a non-empty string"],
    )
    .await;
}

#[tokio::test]
async fn message_processor_dedupes_through_kv_when_asked() {
    let host = FakeHost::echo();
    let body = "async onPing(payload) { return 'pong'; }";
    let config = json!({ "dedupeStore": "kv", "dedupePrefix": "seen/" });
    let first = start_on("BaseMessageProcessor", body, config.clone(), host.clone()).await;
    assert_eq!(
        ok(&first, json!({ "id": "p1", "type": "ping" })).await["result"],
        json!("pong")
    );
    assert!(host.kv().get("seen/p1").is_some());
    // Another instance on the same store sees the id.
    let second = start_on("BaseMessageProcessor", body, config, host).await;
    assert_eq!(
        ok(&second, json!({ "id": "p1", "type": "ping" })).await["status"],
        json!("duplicate")
    );
}

#[tokio::test]
async fn protocol_handler_routes_like_http() {
    let host = FakeHost::echo();
    let body = "
      async getOrder(req) { return { id: req.params.id, query: req.query, trace: req.headers['x-trace'] ?? null }; }
      async putOrder(req) { return { status: 201, headers: { 'Location': '/orders/' + req.params.id }, body: req.body }; }
      async boom(req) { throw new Error('kaput'); }
      async picky(req) { throw new klf.KlfInputError('body.n: expected a number', { path: 'body.n' }); }
      async files(req) { return req.params['*']; }
      async onError(error) { this.ctx.log.warn('handled ' + error.message); }";
    let config = json!({ "routes": [
        { "method": "GET", "path": "/orders/:id", "handler": "getOrder" },
        { "method": ["PUT", "PATCH"], "path": "/orders/:id", "handler": "putOrder" },
        { "method": "POST", "path": "/orders", "handler": { "call": "pricing" } },
        { "method": "GET", "path": "/boom", "handler": "boom" },
        { "method": "POST", "path": "/picky", "handler": "picky" },
        { "method": "*", "path": "/files/*", "handler": "files" }
    ]});
    let i = start_on("BaseProtocolHandler", body, config, host.clone()).await;
    let json_type = json!({ "content-type": "application/json" });
    assert_eq!(
        ok(&i, json!({ "method": "get", "path": "/orders/a%20b?x=1&x=2&y=z", "headers": { "X-Trace": "t1" } })).await,
        json!({ "status": 200, "headers": json_type, "body": { "id": "a b", "query": { "x": ["1", "2"], "y": "z" }, "trace": "t1" } })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "method": "PATCH", "path": "/orders/9/", "body": { "n": 1 } })
        )
        .await,
        json!({ "status": 201, "headers": { "location": "/orders/9", "content-type": "application/json" }, "body": { "n": 1 } })
    );
    let created = ok(
        &i,
        json!({ "method": "POST", "path": "/orders", "body": { "sku": "x" } }),
    )
    .await;
    assert_eq!(created["body"]["target"], json!("pricing"));
    assert_eq!(created["body"]["input"]["body"], json!({ "sku": "x" }));
    assert_eq!(
        ok(&i, json!({ "method": "DELETE", "path": "/orders/1" })).await,
        json!({ "status": 405, "headers": { "allow": "GET, PUT, PATCH", "content-type": "application/json" },
                "body": { "error": "DELETE is not allowed on /orders/1 (allowed: GET, PUT, PATCH)" } })
    );
    assert_eq!(
        ok(&i, json!({ "method": "GET", "path": "/nowhere" })).await["body"],
        json!({ "error": "no route for GET /nowhere", "paths": ["/orders/:id", "/orders", "/boom", "/picky", "/files/*"] })
    );
    assert_eq!(
        ok(&i, json!({ "method": "GET", "path": "/nowhere" })).await["status"],
        json!(404)
    );
    assert_eq!(
        ok(&i, json!({ "method": "GET", "path": "/boom" })).await,
        json!({ "status": 500, "headers": json_type, "body": { "error": "kaput", "name": "Error" } })
    );
    assert!(
        host.logs()
            .contains(&(LogLevel::Warn, "handled kaput".to_string()))
    );
    assert_eq!(
        ok(&i, json!({ "method": "POST", "path": "/picky" })).await["status"],
        json!(400)
    );
    assert_eq!(
        ok(&i, json!({ "method": "HEAD", "path": "/files/a/b.txt" })).await["body"],
        json!("a/b.txt")
    );
    // Malformed requests are 400s that say what is wrong.
    for (request, says) in [
        (
            json!({ "path": "/orders/1" }),
            "request.method: expected an HTTP method",
        ),
        (
            json!({ "method": "GET", "path": "orders" }),
            "request.path: expected a path starting with \"/\"",
        ),
        (
            json!({ "method": "GET", "path": "/orders/%E0%A4%A" }),
            "malformed percent-encoding",
        ),
        (
            json!({ "method": "GET", "path": "/x", "headers": { "a": 1 } }),
            "request.headers.a: expected a string",
        ),
        (json!("GET /"), "request: expected an object"),
    ] {
        let response = ok(&i, request.clone()).await;
        assert_eq!(response["status"], json!(400), "{request}");
        let error = response["body"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{error:?} should contain {says:?}");
    }
    let broken = start(
        "BaseProtocolHandler",
        "",
        json!({ "routes": [{ "path": "/x", "handler": "missing" }] }),
    )
    .await;
    fails_with(
        &broken,
        json!({ "method": "GET", "path": "/x" }),
        &["ConfigError: settings.routes[0].handler: the class has no method \"missing\""],
    )
    .await;
}

#[tokio::test]
async fn serializer_round_trips_csv_json_base64_and_querystrings() {
    let i = start("BaseSerializer", "", json!({})).await;
    let records = json!([
        { "name": "Ann \"A\"", "note": "a,b", "n": 1 },
        { "name": "Bob", "note": "line1\nline2", "n": 2.5, "vip": true },
        { "name": " padded ", "n": null }
    ]);
    let columns = json!(["name", "note", "n", "vip"]);
    let csv = call(&i, "toCSV", json!([records, { "columns": columns }])).await;
    assert_eq!(
        csv,
        json!(
            "name,note,n,vip\n\"Ann \"\"A\"\"\",\"a,b\",1,\nBob,\"line1\nline2\",2.5,true\n\" padded \",,,\n"
        )
    );
    assert_eq!(
        call(
            &i,
            "fromCSV",
            json!([csv, { "types": { "n": "number", "vip": "boolean" } }])
        )
        .await,
        json!([
            { "name": "Ann \"A\"", "note": "a,b", "n": 1, "vip": null },
            { "name": "Bob", "note": "line1\nline2", "n": 2.5, "vip": true },
            { "name": " padded ", "note": "", "n": null, "vip": null }
        ])
    );
    // Without columns, every key in the order first seen (serde_json hands keys over sorted).
    let default = call(&i, "toCSV", json!([records])).await;
    assert!(
        default
            .as_str()
            .is_some_and(|t| t.starts_with("n,name,note,vip\n1,\"Ann")),
        "{default}"
    );
    // CRLF, another delimiter, a quoted CRLF inside a field, no header.
    assert_eq!(
        call(
            &i,
            "fromCSV",
            json!(["a;b\r\n1;\"x\r\ny\"\r\n\r\n2;3", { "delimiter": ";", "header": false }])
        )
        .await,
        json!([["a", "b"], ["1", "x\r\ny"], ["2", "3"]])
    );
    assert_eq!(
        call(
            &i,
            "toCSV",
            json!([[{ "a": 1 }], { "delimiter": "\t", "columns": ["a", "b"] }])
        )
        .await,
        json!("a\tb\n1\t\n")
    );
    // Errors name the line.
    for (text, says) in [
        (
            "a,b\n1,\"2\n3,4\n",
            "CSV line 2: a quoted field is never closed",
        ),
        (
            "a,b\n1,2\n\"3\"\n4,5,6\n",
            "CSV line 3: 1 fields, expected 2 (columns: a, b)",
        ),
        (
            "a,b\n1,x\"y\n",
            "CSV line 2: a quote inside an unquoted field",
        ),
        (
            "a,b\n1,2\n3,\"4\"x\n",
            "CSV line 3: unexpected \"x\" after a closing quote",
        ),
        (
            "a,a\n1,2\n",
            "CSV line 1: the header names column \"a\" twice",
        ),
    ] {
        call_fails_with(&i, "fromCSV", json!([text]), &["InputError", says]).await;
    }
    call_fails_with(
        &i,
        "fromCSV",
        json!(["a,b\n1,2\n\n3,zz\n", { "types": { "b": "number" } }]),
        &["CSV line 4, column \"b\": expected a number, got \"zz\""],
    )
    .await;
    call_fails_with(
        &i,
        "fromCSV",
        json!(["a\n1\n", { "delimiter": "ab" }]),
        &["options.delimiter: expected one character"],
    )
    .await;

    let text = "héllo ✓ 😀";
    assert_eq!(
        call(&i, "toBase64", json!([text])).await,
        json!("aMOpbGxvIOKckyDwn5iA")
    );
    assert_eq!(
        call(&i, "fromBase64", json!(["aMOpbGxvIOKckyDwn5iA"])).await,
        json!(text)
    );
    // URL-safe alphabet and missing padding are accepted.
    assert_eq!(
        call(&i, "fromBase64", json!(["Pz8_YT8-aGk"])).await,
        json!("???a?>hi")
    );
    call_fails_with(
        &i,
        "fromBase64",
        json!(["a$b="]),
        &["text: not base64 (\"$\" at offset 1)"],
    )
    .await;
    call_fails_with(&i, "fromBase64", json!(["/w=="]), &["text: not UTF-8 text"]).await;
    call_fails_with(
        &i,
        "fromJSON",
        json!(["{\"a\": 1,\n \"b\": }"]),
        &["InputError: text: not valid JSON at line 2, column 7 (offset 15)"],
    )
    .await;
    assert_eq!(
        call(&i, "fromJSON", json!(["[1,{\"a\":null}]"])).await,
        json!([1, { "a": null }])
    );
    assert_eq!(
        call(&i, "toJSON", json!([{ "a": [1] }, { "pretty": true }])).await,
        json!("{\n  \"a\": [\n    1\n  ]\n}")
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "encode", "to": "query", "data": { "a": [1, 2], "b": "x y&z" } })
        )
        .await,
        json!({ "data": "a=1&a=2&b=x%20y%26z" })
    );
    assert_eq!(
        call(&i, "fromQuery", json!(["?a=1&a=2&b=x+y%21&c"])).await,
        json!({ "a": ["1", "2"], "b": "x y!", "c": "" })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "convert", "from": "csv", "to": "json", "data": "x,y\n1,2\n" })
        )
        .await,
        json!({ "data": "[{\"x\":\"1\",\"y\":\"2\"}]" })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "decode", "from": "base64", "data": "aGk=" })
        )
        .await,
        json!({ "data": "hi" })
    );
    fails_with(
        &i,
        json!({ "op": "convert", "from": "csv", "to": "yaml", "data": "a\n" }),
        &["format: expected one of \"json\", \"csv\", \"base64\", \"query\", got \"yaml\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "pack" }),
        &["input.op: expected one of \"encode\", \"decode\", \"convert\""],
    )
    .await;
}

/// Fails the first `failures` calls with a host error, then answers `{ok: input}`.
fn flaky(failures: usize) -> (Arc<FakeHost>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let host = FakeHost::builder()
        .on_call(move |target, input| {
            if seen.fetch_add(1, Ordering::SeqCst) < failures {
                return Err(SandboxError::Host(format!("{target} is down")));
            }
            Ok(json!({ "ok": input }))
        })
        .build();
    (host, count)
}

#[tokio::test]
async fn connector_retries_host_errors_and_gives_up_with_the_last_one() {
    let (host, count) = flaky(2);
    let i = start_on(
        "BaseConnector",
        "",
        json!({ "target": "pricing", "retries": 2 }),
        host,
    )
    .await;
    assert_eq!(
        ok(&i, json!({ "sku": "a" })).await,
        json!({ "result": { "ok": { "sku": "a" } }, "attempts": 3 })
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let (host, count) = flaky(usize::MAX);
    let i = start_on(
        "BaseConnector",
        "",
        json!({ "target": "pricing", "retries": 1 }),
        host,
    )
    .await;
    // The host's error reaches the caller typed, after 1 + retries attempts.
    match i.execute(json!({}), meta()).await {
        Err(SandboxError::Host(message)) => {
            assert!(message.contains("pricing is down"), "{message}")
        }
        other => panic!("expected the host error, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // A denied call (an undeclared dependency) is not retried.
    let (host, count) = flaky(0);
    let i = start_on("BaseConnector", "", json!({ "target": "stranger" }), host).await;
    match i.execute(json!({}), meta()).await {
        Err(SandboxError::CapabilityDenied { capability, .. }) => assert_eq!(capability, "call"),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 0);
    // send() with an explicit target.
    assert_eq!(
        call(&i, "send", json!([{ "n": 1 }, "dep"])).await,
        json!({ "result": { "ok": { "n": 1 } }, "attempts": 1 })
    );
}

#[tokio::test]
async fn connector_rate_limits_with_a_token_bucket() {
    let (host, count) = flaky(0);
    let config = json!({ "target": "dep", "rateLimit": { "perSecond": 0.001, "burst": 2 } });
    let i = start_on("BaseConnector", "", config, host).await;
    ok(&i, json!(1)).await;
    ok(&i, json!(2)).await;
    fails_with(
        &i,
        json!(3),
        &["RateLimited: rate limit of 0.001/s (burst 2) reached; retry after"],
    )
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // With a short wait allowed, the call waits for its token instead.
    let (host, count) = flaky(0);
    let config = json!({ "target": "dep", "rateLimit": { "perSecond": 100, "burst": 1 }, "waitForToken": true, "maxWaitMs": 50 });
    let i = start_on("BaseConnector", "", config, host).await;
    for n in 0..3 {
        ok(&i, json!(n)).await;
    }
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let unconfigured = start("BaseConnector", "", json!({})).await;
    fails_with(
        &unconfigured,
        json!({}),
        &["ConfigError: settings.target: expected the name of the function to call"],
    )
    .await;
    let bad = start(
        "BaseConnector",
        "",
        json!({ "target": "dep", "rateLimit": { "perSecond": -1 } }),
    )
    .await;
    fails_with(
        &bad,
        json!({}),
        &["settings.rateLimit.perSecond: expected a number > 0, got -1"],
    )
    .await;
}

// ---- Data ----------------------------------------------------------------------------------------

#[tokio::test]
async fn data_store_versions_records_and_detects_conflicts() {
    let host = FakeHost::echo();
    let config = json!({ "collection": "orders", "schema": {
        "type": "object", "required": ["id", "total"],
        "properties": { "id": { "type": "string" }, "total": { "type": "number", "minimum": 0 } },
        "additionalProperties": false
    }});
    let i = start_on("BaseDataStore", "", config, host.clone()).await;
    let first = ok(
        &i,
        json!({ "op": "put", "record": { "id": "o1", "total": 5 } }),
    )
    .await["record"]
        .clone();
    assert_eq!(first["_version"], json!(1));
    assert_eq!(first["_createdAt"], first["_updatedAt"]);
    assert!(
        first["_updatedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{first}"
    );
    assert_eq!(host.kv().get("orders/o1"), Some(first.clone()));
    // A read-modify-write carries the version it read.
    let mut changed = first.clone();
    changed["total"] = json!(6);
    assert_eq!(
        ok(&i, json!({ "op": "put", "record": changed })).await["record"]["_version"],
        json!(2)
    );
    fails_with(
        &i,
        json!({ "op": "put", "record": changed }),
        &["ConflictError: orders/o1: expected version 1, but the stored version is 2"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "put", "record": { "id": "o1", "total": 1 }, "expectedVersion": 0 }),
        &["expected version 0, but the stored version is 2"],
    )
    .await;
    assert_eq!(
        ok(
            &i,
            json!({ "op": "put", "record": { "id": "o2", "total": 50 }, "expectedVersion": 0 })
        )
        .await["record"]["_version"],
        json!(1)
    );
    ok(
        &i,
        json!({ "op": "put", "record": { "id": "p3", "total": 500 } }),
    )
    .await;
    fails_with(&i, json!({ "op": "put", "record": { "id": "o4", "total": -1, "note": "x" } }), &["InputError: invalid record: record.total: expected a number ≥ 0, got -1; record.note: is not allowed"]).await;
    fails_with(
        &i,
        json!({ "op": "put", "record": { "total": 1 } }),
        &["record.id: expected a record id"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "upsert" }),
        &["input.op: expected one of \"put\", \"get\", \"delete\", \"list\", \"query\""],
    )
    .await;

    assert_eq!(
        ok(&i, json!({ "op": "get", "id": "o1" })).await["record"]["total"],
        json!(6)
    );
    assert_eq!(
        ok(&i, json!({ "op": "get", "id": "nope" })).await,
        json!({ "record": null })
    );
    let ids = |records: &Value| -> Vec<Value> {
        records["records"]
            .as_array()
            .map(|r| r.iter().map(|r| r["id"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&ok(&i, json!({ "op": "list", "prefix": "o" })).await),
        [json!("o1"), json!("o2")]
    );
    assert_eq!(
        ids(&ok(&i, json!({ "op": "list", "limit": 2 })).await),
        [json!("o1"), json!("o2")]
    );
    assert_eq!(
        ids(&ok(
            &i,
            json!({ "op": "query", "filter": { "field": "total", "op": "gte", "value": 6 } })
        )
        .await),
        [json!("o1"), json!("o2"), json!("p3")]
    );
    assert_eq!(ids(&ok(&i, json!({ "op": "query", "filter": { "field": "total", "op": "gt", "value": 6 }, "limit": 1 })).await), [json!("o2")]);
    fails_with(
        &i,
        json!({ "op": "query", "filter": { "field": "total", "op": "over" } }),
        &["filter.op: unknown operator \"over\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "delete", "id": "o2", "expectedVersion": 5 }),
        &["ConflictError"],
    )
    .await;
    assert_eq!(
        ok(&i, json!({ "op": "delete", "id": "o2" })).await,
        json!({ "deleted": true })
    );
    assert_eq!(
        ok(&i, json!({ "op": "delete", "id": "o2" })).await,
        json!({ "deleted": false })
    );
    assert_eq!(host.kv().get("orders/o2"), None);
}

#[tokio::test]
async fn data_processor_runs_pipelines_with_exact_numbers() {
    let i = start("BaseDataProcessor", "", json!({})).await;
    let records = json!([
        { "t": 1, "sym": "A", "price": 10, "qty": 1 },
        { "t": 2, "sym": "B", "price": 20, "qty": 2 },
        { "t": 3, "sym": "A", "price": 11, "qty": 3 },
        { "t": 4, "sym": "B", "price": 22, "qty": 1 },
        { "t": 5, "sym": "A", "price": 12.1, "qty": 2 }
    ]);
    let steps = json!([
        { "compute": {
            "value": { "op": "mul", "args": ["price", "qty"] },
            "chg": { "op": "pct_change", "args": ["price"] }
        }},
        // A computed field is there for the next step.
        { "compute": {
            "net": { "op": "round", "args": [{ "op": "sub", "args": ["value", { "op": "mul", "args": ["value", 0.1] }] }, 2] }
        }},
        { "window": { "field": "price", "size": 2, "op": "avg", "as": "ma2", "by": "sym" } },
        { "filter": { "field": "sym", "op": "eq", "value": "A" } },
        { "sort": { "by": "price", "order": "desc" } },
        { "select": ["t", "value", "net", "ma2", "chg"] }
    ]);
    let out = ok(&i, json!({ "records": records, "steps": steps })).await["records"].clone();
    assert_eq!(out.as_array().map(Vec::len), Some(3));
    assert_eq!(out[0]["t"], json!(5));
    close(&out[0]["value"], 24.2);
    close(&out[0]["net"], 21.78);
    close(&out[0]["ma2"], 11.55);
    close(&out[0]["chg"], (12.1 - 22.0) / 22.0);
    assert_eq!(out[1]["t"], json!(3));
    close(&out[1]["ma2"], 10.5);
    close(&out[1]["chg"], (11.0 - 20.0) / 20.0);
    assert_eq!(
        out[2],
        json!({ "t": 1, "value": 10, "net": 9, "ma2": null, "chg": null })
    );

    let groups = ok(&i, json!({ "records": records, "steps": [
        { "groupBy": { "by": ["sym"], "aggregates": {
            "n": { "op": "count" }, "avg": { "op": "avg", "field": "price" },
            "sum": { "op": "sum", "field": "qty" }, "sd": { "op": "stddev", "field": "price" },
            "lo": { "op": "min", "field": "price" }, "hi": { "op": "max", "field": "price" },
            "first": { "op": "first", "field": "t" }, "last": { "op": "last", "field": "t" } } } },
        { "sort": { "by": "sym" } }
    ]})).await["records"].clone();
    assert_eq!(groups[0]["sym"], json!("A"));
    assert_eq!(
        (
            groups[0]["n"].clone(),
            groups[0]["sum"].clone(),
            groups[0]["first"].clone(),
            groups[0]["last"].clone()
        ),
        (json!(3), json!(6), json!(1), json!(5))
    );
    close(&groups[0]["avg"], 33.1 / 3.0);
    let mean = 33.1 / 3.0;
    let var =
        ((10.0f64 - mean).powi(2) + (11.0f64 - mean).powi(2) + (12.1f64 - mean).powi(2)) / 2.0;
    close(&groups[0]["sd"], var.sqrt());
    assert_eq!(
        (groups[0]["lo"].clone(), groups[0]["hi"].clone()),
        (json!(10), json!(12.1))
    );
    close(&groups[1]["sd"], 2.0f64.sqrt());
    assert_eq!(groups[1]["n"], json!(2));

    let dupes = json!([{ "a": 1, "b": 2 }, { "a": 1, "b": 3 }, { "a": 1, "b": 2 }, { "a": null }]);
    assert_eq!(
        ok(
            &i,
            json!({ "records": dupes, "steps": [{ "dedupe": ["a"] }] })
        )
        .await["records"],
        json!([{ "a": 1, "b": 2 }, { "a": null }])
    );
    assert_eq!(
        ok(
            &i,
            json!({ "records": dupes, "steps": [{ "dedupe": [] }, { "limit": 2 }] })
        )
        .await["records"],
        json!([{ "a": 1, "b": 2 }, { "a": 1, "b": 3 }])
    );
    // Sorting puts missing values last in both orders, and is stable.
    let mixed = json!([{ "k": 2, "i": 0 }, { "i": 1 }, { "k": 10, "i": 2 }, { "k": 2, "i": 3 }]);
    let order = |out: Value| -> Vec<Value> {
        out["records"]
            .as_array()
            .map(|r| r.iter().map(|r| r["i"].clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        order(
            ok(
                &i,
                json!({ "records": mixed, "steps": [{ "sort": { "by": "k", "order": "desc" } }] })
            )
            .await
        ),
        [json!(2), json!(0), json!(3), json!(1)]
    );
    // A partial window, when asked for.
    let partial = ok(&i, json!({ "records": [{ "v": 1 }, { "v": 3 }, { "v": 8 }], "steps": [{ "window": { "field": "v", "size": 2, "op": "sum", "partial": true } }] })).await;
    assert_eq!(
        partial["records"],
        json!([{ "v": 1, "v_sum_2": 1 }, { "v": 3, "v_sum_2": 4 }, { "v": 8, "v_sum_2": 11 }])
    );
}

#[tokio::test]
async fn data_processor_errors_name_the_step_and_the_record() {
    let i = start(
        "BaseDataProcessor",
        "",
        json!({ "steps": [{ "limit": 1 }, { "explode": "x" }] }),
    )
    .await;
    fails_with(
        &i,
        json!([{ "a": 1 }]),
        &["InputError: settings.steps[1]: unknown step \"explode\""],
    )
    .await;
    let i = start("BaseDataProcessor", "", json!({})).await;
    let records = json!([{ "price": 1 }, { "price": 2 }, { "price": "x" }]);
    fails_with(
        &i,
        json!({ "records": records, "steps": [{ "window": { "field": "price", "size": 2 } }] }),
        &["steps[0].window: records[2].price is \"x\", expected a number"],
    )
    .await;
    fails_with(&i, json!({ "records": records, "steps": [{ "limit": 5 }, { "compute": { "d": { "op": "div", "args": ["price", "qty"] } } }] }), &["steps[1].compute.d: records[0].qty is nothing, expected a number"]).await;
    fails_with(&i, json!({ "records": records, "steps": [{ "compute": { "d": { "op": "pow", "args": [1, 2] } } }] }), &["steps[0].compute.d.op: expected one of \"add\""]).await;
    fails_with(&i, json!({ "records": records, "steps": [{ "compute": { "d": { "op": "sub", "args": [1] } } }] }), &["steps[0].compute.d.args: \"sub\" takes 2 arguments, got 1"]).await;
    fails_with(&i, json!({ "records": records, "steps": [{ "groupBy": { "by": "price", "aggregates": { "s": { "op": "sum" } } } }] }), &["steps[0].groupBy.aggregates.s.field: expected the field to sum"]).await;
    fails_with(
        &i,
        json!({ "records": records, "steps": [{ "filter": { "field": "price", "op": "near" } }] }),
        &["steps[0].filter.op: unknown operator \"near\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "records": [1, 2] }),
        &["records[0]: expected an object, got 1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "records": records, "steps": [{ "limit": -1 }] }),
        &["steps[0].limit: expected an integer ≥ 0, got -1"],
    )
    .await;
    // Division by zero is null, not Infinity.
    assert_eq!(ok(&i, json!({ "records": [{ "a": 1, "b": 0 }], "steps": [{ "compute": { "r": { "op": "div", "args": ["a", "b"] } } }] })).await["records"], json!([{ "a": 1, "b": 0, "r": null }]));
}

#[tokio::test]
async fn data_validator_sorts_records_into_valid_and_invalid() {
    let config = json!({
        "schema": { "type": "object", "properties": { "email": { "type": "string", "format": "email" } } },
        "rules": [
            { "unique": ["id"] }, { "range": { "field": "age", "min": 0, "max": 130 } },
            { "required": ["id", "email"] }, { "pattern": { "field": "code", "pattern": "^[A-Z]{3}$" } },
            { "custom": "adultsOnly" }
        ]
    });
    let body = "adultsOnly(record) { return record.age !== undefined && record.age < 18 ? 'must be an adult' : null; }";
    let i = start("BaseDataValidator", body, config).await;
    let out = ok(
        &i,
        json!([
            { "id": 1, "email": "a@b.co", "age": 30, "code": "ABC" },
            { "id": 1, "email": "nope", "age": 200 },
            { "email": "c@d.io", "age": 12, "code": "abc" },
            "not a record"
        ]),
    )
    .await;
    assert_eq!(
        out["summary"],
        json!({ "total": 4, "valid": 1, "invalid": 3 })
    );
    assert_eq!(
        out["valid"],
        json!([{ "id": 1, "email": "a@b.co", "age": 30, "code": "ABC" }])
    );
    let messages = |k: usize| -> Vec<String> {
        out["invalid"][k]["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["path"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(out["invalid"][0]["index"], json!(1));
    assert_eq!(
        messages(0),
        [
            "records[1].email expected an email address, got \"nope\"",
            "records[1].id duplicates records[0] on id",
            "records[1].age expected a number in [0, 130], got 200",
        ]
    );
    assert_eq!(
        messages(1),
        [
            "records[2].id is required",
            "records[2].code expected a string matching /^[A-Z]{3}$/, got \"abc\"",
            "records[2] must be an adult",
        ]
    );
    assert_eq!(
        messages(2),
        ["records[3] expected object, got \"not a record\""]
    );
    fails_with(
        &i,
        json!({ "records": "x" }),
        &["records: expected an array"],
    )
    .await;
    let broken = start(
        "BaseDataValidator",
        "",
        json!({ "rules": [{ "between": {} }] }),
    )
    .await;
    fails_with(&broken, json!([]), &["ConfigError: settings.rules[0]: a rule is one of {unique}, {range}, {required}, {pattern}, {custom}"]).await;
    assert_eq!(
        ok(&i, json!({ "records": [] })).await["summary"],
        json!({ "total": 0, "valid": 0, "invalid": 0 })
    );
}

#[tokio::test]
async fn data_transformer_maps_casts_and_flattens() {
    let config = json!({
        "mapping": {
            "customer.name": { "from": "Name", "trim": true },
            "customer.email": { "from": "contact.Email", "trim": true, "lowercase": true },
            "total": { "from": "Total", "cast": "number" },
            "paid": { "from": "Paid", "cast": "boolean", "default": false },
            "at": { "from": "When", "cast": "date" },
            "code": { "from": "Code", "uppercase": true },
            "source": { "value": "import" },
            "id": "Id"
        }
    });
    let i = start("BaseDataTransformer", "", config).await;
    assert_eq!(
        ok(&i, json!({ "Id": 7, "Name": "  Ann ", "contact": { "Email": " A@B.CO" }, "Total": "12.50", "When": 1704164645000_i64, "Code": "x1", "Ignored": 1 })).await,
        json!({ "customer": { "name": "Ann", "email": "a@b.co" }, "total": 12.5, "paid": false,
                "at": "2024-01-02T03:04:05.000Z", "code": "X1", "source": "import", "id": 7 })
    );
    fails_with(
        &i,
        json!([{ "Total": "1" }, { "Total": "abc" }]),
        &["InputError: records[1].Total: expected a number (or numeric text) to cast, got \"abc\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "record": { "When": "someday" } }),
        &["record.When: expected a date"],
    )
    .await;
    fails_with(
        &i,
        json!({ "record": { "Paid": "maybe" } }),
        &["record.Paid: expected a boolean"],
    )
    .await;
    let keep = start("BaseDataTransformer", "", json!({ "mapping": { "n": { "from": "n", "cast": "number" } }, "keepUnmapped": true, "drop": ["secret", "nested.pin"] })).await;
    assert_eq!(
        ok(
            &keep,
            json!({ "records": [{ "n": "3", "secret": "x", "nested": { "pin": 1, "keep": 2 } }] })
        )
        .await,
        json!({ "records": [{ "n": 3, "nested": { "keep": 2 } }] })
    );
    let nested = json!({ "a": { "b": 1, "c": [1, { "d": 2 }] }, "e": {}, "f": "x" });
    let flat = call(&keep, "flatten", json!([nested])).await;
    assert_eq!(
        flat,
        json!({ "a.b": 1, "a.c.0": 1, "a.c.1.d": 2, "e": {}, "f": "x" })
    );
    assert_eq!(call(&keep, "unflatten", json!([flat])).await, nested);
    assert_eq!(
        call(&keep, "flatten", json!([{ "a": { "b": 1 } }, "/"])).await,
        json!({ "a/b": 1 })
    );
    let broken = start(
        "BaseDataTransformer",
        "",
        json!({ "mapping": { "x": { "from": "y", "cast": "decimal" } } }),
    )
    .await;
    fails_with(&broken, json!({}), &["ConfigError: settings.mapping.x.cast: expected one of \"number\", \"string\", \"boolean\", \"date\""]).await;
}

// ---- Intelligence ----------------------------------------------------------------------------------

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test]
async fn model_processor_scores_local_models() {
    let config = json!({ "model": { "kind": "logistic", "weights": { "age": 0.05, "income": 0.00001 },
                                     "bias": -3, "threshold": 0.5, "labels": ["no", "yes"] } });
    let i = start("BaseModelProcessor", "", config).await;
    let out = ok(&i, json!({ "age": 40, "income": 50000 })).await;
    close(&out["score"], sigmoid(-3.0 + 2.0 + 0.5));
    assert_eq!(out["label"], json!("no"));
    let all = ok(&i, json!({ "records": [{ "id": "a", "age": 80, "income": 100000 }, { "id": "b", "age": 20, "income": 0 }] })).await;
    close(&all["records"][0]["score"], sigmoid(2.0));
    assert_eq!(
        (
            all["records"][0]["label"].clone(),
            all["records"][0]["id"].clone()
        ),
        (json!("yes"), json!("a"))
    );
    close(&all["records"][1]["score"], sigmoid(-2.0));
    let explained = call(&i, "explain", json!([{ "age": 40, "income": 50000 }])).await;
    assert_eq!(
        (
            explained[0]["feature"].clone(),
            explained[1]["feature"].clone()
        ),
        (json!("age"), json!("income"))
    );
    close(&explained[0]["contribution"], 2.0);
    close(&explained[1]["contribution"], 0.5);
    fails_with(
        &i,
        json!({ "features": { "age": 40 } }),
        &["InputError: features.income: expected a number (the model weighs it), got nothing"],
    )
    .await;
    fails_with(
        &i,
        json!({ "records": [{ "age": 1, "income": 2 }, { "age": "old", "income": 1 }] }),
        &["records[1].age: expected a number"],
    )
    .await;
    let linear = start(
        "BaseModelProcessor",
        "",
        json!({ "model": { "kind": "linear", "weights": { "x": 2, "y": -1 }, "bias": 0.5 } }),
    )
    .await;
    assert_eq!(
        ok(&linear, json!({ "features": { "x": 3, "y": 1 } })).await,
        json!({ "score": 5.5 })
    );
    let broken = start(
        "BaseModelProcessor",
        "",
        json!({ "model": { "kind": "tree" } }),
    )
    .await;
    fails_with(&broken, json!({}), &["ConfigError: settings.model.kind: expected one of \"linear\", \"logistic\", \"provider\", got \"tree\""]).await;
}

#[tokio::test]
async fn model_processor_asks_the_provider_with_a_filled_prompt() {
    let host = FakeHost::builder()
        .model(|request: &ModelRequest| {
            let last = request
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let text = if last.contains("broken") {
                "I cannot rate that".to_string()
            } else if request.json {
                format!(
                    "```json\n{{\"sentiment\": \"positive\", \"about\": {}}}\n```",
                    serde_json::to_string(&last).unwrap_or_default()
                )
            } else {
                format!("echo: {last}")
            };
            Ok(model_reply(text, 12, 3))
        })
        .build();
    let config = json!({ "model": { "kind": "provider", "system": "You rate reviews.", "prompt": "Rate: {{review}} ({{stars}} stars, {{meta}})",
                                      "json": true, "maxTokens": 50, "temperature": 0 } });
    let i = start_granted(
        "BaseModelProcessor",
        "",
        config,
        host.clone(),
        &["model"],
        &[],
    )
    .await;
    let out = ok(
        &i,
        json!({ "review": "great", "stars": 5, "meta": { "lang": "en" } }),
    )
    .await;
    let prompt = "Rate: great (5 stars, {\"lang\":\"en\"})";
    assert_eq!(
        out["json"],
        json!({ "sentiment": "positive", "about": prompt })
    );
    assert_eq!(
        (out["model"].clone(), out["usage"].clone()),
        (
            json!("test-model"),
            json!({ "inputTokens": 12, "outputTokens": 3 })
        )
    );
    assert!(
        out["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("```json"))
    );
    let sent = host.model_requests();
    let request = &sent[0];
    let messages: Vec<(String, String)> = request
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();
    assert_eq!(
        messages,
        [
            ("system".to_string(), "You rate reviews.".to_string()),
            ("user".to_string(), prompt.to_string())
        ]
    );
    assert_eq!(
        (request.max_tokens, request.temperature, request.json),
        (Some(50), Some(0.0), true)
    );
    fails_with(
        &i,
        json!({ "review": "great" }),
        &["InputError: input.stars: is required by the prompt template"],
    )
    .await;
    fails_with(
        &i,
        json!({ "review": "broken", "stars": 1, "meta": 0 }),
        &["the model did not answer JSON", "\"I cannot rate that\""],
    )
    .await;
    let all = ok(
        &i,
        json!({ "records": [{ "review": "ok", "stars": 3, "meta": 1 }] }),
    )
    .await;
    assert_eq!(all["records"][0]["review"], json!("ok"));
    assert_eq!(
        all["records"][0]["inference"]["json"]["sentiment"],
        json!("positive")
    );
    // Without a template, the input is the prompt.
    let plain = start_granted(
        "BaseModelProcessor",
        "",
        json!({ "model": { "kind": "provider" } }),
        host.clone(),
        &["model"],
        &[],
    )
    .await;
    assert_eq!(
        ok(&plain, json!("hello")).await["text"],
        json!("echo: hello")
    );
    assert_eq!(
        ok(&plain, json!({ "prompt": "hi" })).await["text"],
        json!("echo: hi")
    );
    assert_eq!(
        ok(&plain, json!({ "a": 1 })).await["text"],
        json!("echo: {\"a\":1}")
    );
    fails_with(&plain, json!(null), &["input: expected a prompt"]).await;
    // No provider: the host's typed error, with its advice, reaches the caller.
    let bare = FakeHost::echo();
    let none = start_granted(
        "BaseModelProcessor",
        "",
        json!({ "model": { "kind": "provider" } }),
        bare,
        &["model"],
        &[],
    )
    .await;
    match none.execute(json!("hello"), meta()).await {
        Err(SandboxError::ModelUnavailable(message)) => {
            assert!(message.contains("KLF_MODEL_BASE_URL"), "{message}")
        }
        other => panic!("expected ModelUnavailable, got {other:?}"),
    }
    let ungranted = start_on(
        "BaseModelProcessor",
        "",
        json!({ "model": { "kind": "provider" } }),
        host,
    )
    .await;
    match ungranted.execute(json!("hello"), meta()).await {
        Err(SandboxError::CapabilityDenied { capability, .. }) => assert_eq!(capability, "model"),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn decision_engine_applies_rules_by_priority() {
    let rules = json!([
        { "id": "gold", "priority": 10, "when": { "field": "spend", "op": "gte", "value": 1000 }, "then": { "tier": "gold" } },
        { "id": "silver", "priority": 5, "when": { "field": "spend", "op": "gte", "value": 100 }, "then": { "tier": "silver" } },
        { "id": "vip", "priority": 20, "when": { "all": [{ "field": "vip", "value": true }, { "field": "country", "op": "in", "value": ["NL", "BE"] }] }, "then": { "tier": "vip" } },
        { "id": "also-silver", "priority": 5, "when": { "field": "referrals", "op": "gt", "value": 3 }, "then": { "tier": "silver+" } }
    ]);
    let first = start(
        "BaseDecisionEngine",
        "",
        json!({ "rules": rules, "default": { "tier": "none" } }),
    )
    .await;
    assert_eq!(
        ok(
            &first,
            json!({ "spend": 1500, "vip": true, "country": "NL" })
        )
        .await,
        json!({ "decision": { "tier": "vip" }, "matched": ["vip"], "trace": [{ "id": "vip", "matched": true }] })
    );
    assert_eq!(
        ok(&first, json!({ "spend": 150, "referrals": 5 })).await,
        json!({ "decision": { "tier": "silver" }, "matched": ["silver"], "trace": [
            { "id": "vip", "matched": false }, { "id": "gold", "matched": false }, { "id": "silver", "matched": true }] })
    );
    assert_eq!(
        ok(&first, json!({ "spend": 1 })).await["decision"],
        json!({ "tier": "none" })
    );
    let all = start(
        "BaseDecisionEngine",
        "",
        json!({ "rules": rules, "mode": "all" }),
    )
    .await;
    assert_eq!(
        ok(
            &all,
            json!({ "spend": 1500, "vip": true, "country": "BE", "referrals": 4 })
        )
        .await["decision"],
        json!([{ "tier": "vip" }, { "tier": "gold" }, { "tier": "silver" }, { "tier": "silver+" }])
    );
    assert_eq!(
        ok(
            &all,
            json!({ "spend": 1500, "vip": true, "country": "BE", "referrals": 4 })
        )
        .await["matched"],
        json!(["vip", "gold", "silver", "also-silver"])
    );
    assert_eq!(
        ok(&all, json!({})).await,
        json!({ "decision": null, "matched": [], "trace": [
        { "id": "vip", "matched": false }, { "id": "gold", "matched": false }, { "id": "silver", "matched": false }, { "id": "also-silver", "matched": false }] })
    );
    fails_with(&all, json!("facts"), &["facts: expected an object"]).await;
    let bad = start("BaseDecisionEngine", "", json!({ "rules": [
        { "id": "ok", "when": true, "then": 1 },
        { "id": "broken", "when": { "any": [{ "field": "a", "op": "between", "value": [1, 2] }] } }
    ]})).await;
    fails_with(&bad, json!({ "a": 1 }), &["InputError: settings.rules[1] (\"broken\").when.any[0].op: unknown operator \"between\""]).await;
    let dup = start(
        "BaseDecisionEngine",
        "",
        json!({ "rules": [{ "id": "a", "when": true }, { "id": "a", "when": false }] }),
    )
    .await;
    fails_with(&dup, json!({}), &["two rules are called \"a\""]).await;
}

#[tokio::test]
async fn learning_engine_fits_an_incremental_regression_persisted_in_kv() {
    let host = FakeHost::echo();
    let config = json!({ "stateKey": "model/price" });
    let i = start_on("BaseLearningEngine", "", config.clone(), host.clone()).await;
    fails_with(
        &i,
        json!({ "op": "predict", "x": [1, 2] }),
        &["has not learned anything yet"],
    )
    .await;
    // y = 1 + 2a + 3b, learned in two batches.
    let y = |a: f64, b: f64| 1.0 + 2.0 * a + 3.0 * b;
    let stats = ok(&i, json!({ "op": "learn", "samples": [{ "x": [1, 2], "y": y(1.0, 2.0) }, { "x": [2, 1], "y": y(2.0, 1.0) }] })).await;
    assert_eq!(
        stats,
        json!({ "count": 2, "mean": 8.5, "variance": 0.5, "coefficients": null, "intercept": null })
    );
    fails_with(
        &i,
        json!({ "op": "predict", "x": [1, 1] }),
        &[
            "not enough data to fit 2 coefficient(s)",
            "settings.lambda > 0",
        ],
    )
    .await;
    let stats = ok(&i, json!({ "op": "learn", "samples": [{ "x": [3, 5], "y": y(3.0, 5.0) }, { "x": [0, 0], "y": y(0.0, 0.0) }, { "x": [4, 4], "y": y(4.0, 4.0) }] })).await;
    assert_eq!(stats["count"], json!(5));
    let ys = [9.0, 8.0, 22.0, 1.0, 21.0];
    let mean = ys.iter().sum::<f64>() / 5.0;
    close(&stats["mean"], mean);
    close(
        &stats["variance"],
        ys.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0,
    );
    close_all(&stats["coefficients"], &[2.0, 3.0]);
    close(&stats["intercept"], 1.0);
    close(
        &ok(&i, json!({ "op": "predict", "x": [10, 10] })).await["prediction"],
        51.0,
    );
    // The state is in kv: another instance on the same store predicts the same.
    assert!(host.kv().get("model/price").is_some());
    let other = start_on("BaseLearningEngine", "", config.clone(), host.clone()).await;
    close(
        &ok(&other, json!({ "op": "predict", "x": [-1, 2] })).await["prediction"],
        5.0,
    );
    // Bad samples are refused as a whole batch.
    fails_with(
        &i,
        json!({ "op": "learn", "samples": [{ "x": [1, 1], "y": 6 }, { "x": [1], "y": 1 }] }),
        &["InputError: samples[1].x: expected 2 features (as the model was trained with), got 1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "learn", "samples": [{ "x": [1, "2"], "y": 6 }] }),
        &["samples[0].x[1]: expected a finite number, got \"2\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "learn", "samples": [{ "x": [1, 2] }] }),
        &["samples[0].y: expected a finite number, got nothing"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "predict", "x": [1, 2, 3] }),
        &["x: expected 2 features, got 3"],
    )
    .await;
    assert_eq!(ok(&i, json!({ "op": "stats" })).await["count"], json!(5));
    assert_eq!(
        ok(&i, json!({ "op": "reset" })).await,
        json!({ "reset": true })
    );
    assert_eq!(
        ok(&i, json!({ "op": "stats" })).await,
        json!({ "count": 0, "mean": null, "variance": null, "coefficients": null, "intercept": null })
    );
    // One feature as a plain number; ridge shrinks the slope.
    let samples = json!([{ "x": 1, "y": 2 }, { "x": 2, "y": 4 }, { "x": 3, "y": 6 }]);
    let plain = ok(&i, json!({ "op": "learn", "samples": samples })).await;
    close_all(&plain["coefficients"], &[2.0]);
    close(&plain["intercept"], 0.0);
    let ridge = start_on(
        "BaseLearningEngine",
        "",
        json!({ "stateKey": "ridge", "lambda": 2 }),
        host,
    )
    .await;
    let shrunk = ok(&ridge, json!({ "op": "learn", "samples": samples })).await;
    // Centred: slope = Sxy / (Sxx + λ) = 4 / (2 + 2) = 1; intercept = ȳ - slope·x̄ = 4 - 2 = 2.
    close_all(&shrunk["coefficients"], &[1.0]);
    close(&shrunk["intercept"], 2.0);
}

#[tokio::test]
async fn predictor_computes_moving_averages_trends_and_anomalies() {
    let i = start("BasePredictor", "", json!({})).await;
    close_all(
        &call(&i, "sma", json!([[1, 2, 3, 4, 5, 6], 3])).await,
        &[2.0, 3.0, 4.0, 5.0],
    );
    close_all(
        &call(&i, "ema", json!([[10, 20, 30], 0.5])).await,
        &[10.0, 15.0, 22.5],
    );
    // A span of 3 is alpha 0.5.
    close_all(
        &call(&i, "ema", json!([[10, 20, 30], 3])).await,
        &[10.0, 15.0, 22.5],
    );
    let trend = call(&i, "linearTrend", json!([[1, 3, 5, 7]])).await;
    close(&trend["slope"], 2.0);
    close(&trend["intercept"], 1.0);
    close(&trend["r2"], 1.0);
    // A noisy series: r² from the residuals.
    let xs = [2.0, 4.0, 5.0, 4.0, 5.0];
    let noisy = call(&i, "linearTrend", json!([xs])).await;
    close(&noisy["slope"], 0.6);
    close(&noisy["intercept"], 2.8);
    let fitted: Vec<f64> = (0..5).map(|k| 2.8 + 0.6 * k as f64).collect();
    let mean = xs.iter().sum::<f64>() / 5.0;
    let ss_res: f64 = xs.iter().zip(&fitted).map(|(x, f)| (x - f).powi(2)).sum();
    let ss_tot: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
    close(&noisy["r2"], 1.0 - ss_res / ss_tot);
    close_all(
        &call(&i, "forecast", json!([[1, 3, 5, 7], 2])).await,
        &[9.0, 11.0],
    );
    close_all(
        &call(
            &i,
            "forecast",
            json!([[10, 20, 30], 2, "ema", { "alpha": 0.5 }]),
        )
        .await,
        &[22.5, 22.5],
    );
    let sd = (2.0f64 / 3.0).sqrt();
    close_all(
        &call(&i, "zScores", json!([[1, 2, 3]])).await,
        &[-1.0 / sd, 0.0, 1.0 / sd],
    );
    close_all(&call(&i, "zScores", json!([[4, 4]])).await, &[0.0, 0.0]);
    // Global: twelve ones and a 100; z = (100 - mean) / sd.
    let mut series = vec![1.0; 12];
    series.push(100.0);
    let anomalies = call(&i, "anomalies", json!([series, { "threshold": 3 }])).await;
    assert_eq!(anomalies.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (anomalies[0]["index"].clone(), anomalies[0]["value"].clone()),
        (json!(12), json!(100))
    );
    close(&anomalies[0]["z"], 12.0f64.sqrt());
    // Rolling: each point against the three before it.
    let rolling = call(
        &i,
        "anomalies",
        json!([[10, 10, 11, 10, 50, 10, 11, 11, 11, 12], { "threshold": 3, "window": 3 }]),
    )
    .await;
    let w = [10.0, 11.0, 10.0];
    let m = w.iter().sum::<f64>() / 3.0;
    let s = (w.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 3.0).sqrt();
    assert_eq!(rolling.as_array().map(Vec::len), Some(2), "{rolling}");
    assert_eq!(rolling[0]["index"], json!(4));
    close(&rolling[0]["z"], (50.0 - m) / s);
    // After three equal values, any change is infinitely unusual.
    assert_eq!(rolling[1], json!({ "index": 9, "value": 12, "z": null }));
    assert_eq!(
        ok(
            &i,
            json!({ "series": [1, 2, 3, 4], "method": "sma", "n": 2 })
        )
        .await,
        json!({ "method": "sma", "result": [1.5, 2.5, 3.5] })
    );
    let execute_trend = ok(&i, json!({ "series": [1, 3, 5, 7] })).await;
    assert_eq!(execute_trend["method"], json!("trend"));
    fails_with(
        &i,
        json!({ "series": [1], "method": "trend" }),
        &["InputError: input.series: a linear trend needs at least 2 values, got 1"],
    )
    .await;
    fails_with(
        &i,
        json!({ "series": [1, "x", 3], "method": "sma", "n": 2 }),
        &["input.series[1]: expected a finite number, got \"x\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "series": [1, 2], "method": "sma", "n": 3 }),
        &["input.series: sma over 3 needs at least 3 values, got 2"],
    )
    .await;
    call_fails_with(
        &i,
        "ema",
        json!([[1, 2], 1.5]),
        &["alpha: expected a smoothing factor 0 < alpha ≤ 1 or a span n ≥ 1"],
    )
    .await;
    call_fails_with(
        &i,
        "anomalies",
        json!([[1, 2, 3], { "window": 3 }]),
        &["xs: anomalies over a window of 3 needs at least 4 values, got 3"],
    )
    .await;
    fails_with(
        &i,
        json!({ "series": [1, 2], "method": "arima" }),
        &["input.method: expected one of \"sma\", \"ema\", \"trend\""],
    )
    .await;
}

// ---- Workflow ----------------------------------------------------------------------------------------

#[tokio::test]
async fn workflow_engine_runs_a_dag_in_concurrent_waves() {
    let host = FakeHost::builder()
        .on_call(|target, input| match target {
            "pricing" => Ok(json!({ "price": input["qty"].as_f64().unwrap_or(0.0) * 2.5 })),
            _ => Ok(json!({ "stock": 7 })),
        })
        .build();
    let body = "
      events = [];
      async work(input) {
        this.events.push('start ' + input.name);
        const answer = await this.ctx.call('dep', input);
        this.events.push('end ' + input.name);
        return { name: input.name, stock: answer.stock };
      }
      async total(input) { return { total: input.price * input.factor, label: input.label }; }
      async trace() { return this.events; }";
    let config = json!({
        "steps": [
            { "id": "price", "call": "pricing", "input": { "qty": "$input.qty" } },
            { "id": "stockA", "method": "work", "input": { "name": "a" } },
            { "id": "stockB", "method": "work", "input": { "name": "b" } },
            { "id": "sum", "method": "total", "after": ["stockA", "stockB"],
              "input": { "price": "$steps.price.output.price", "factor": 2, "label": "$$literal" } },
            { "id": "audit", "call": "audit", "after": ["sum"], "when": { "field": "input.audit", "value": true } }
        ],
        "output": { "total": "$steps.sum.output.total", "stocks": ["$steps.stockA.output.stock", "$steps.stockB.output.stock"] }
    });
    let i = start_on("BaseWorkflowEngine", body, config, host.clone()).await;
    let out = ok(&i, json!({ "qty": 4 })).await;
    assert_eq!(out["output"], json!({ "total": 20, "stocks": [7, 7] }));
    assert_eq!(out["steps"]["sum"]["status"], json!("ok"));
    assert_eq!(
        out["steps"]["sum"]["output"],
        json!({ "total": 20, "label": "$literal" })
    );
    assert_eq!(out["steps"]["audit"]["status"], json!("skipped"));
    // stockA and stockB ran in the same wave: both started before either ended.
    let events = call(&i, "trace", json!([])).await;
    let events: Vec<&str> = events
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(&events[..2], ["start a", "start b"], "{events:?}");
    assert_eq!(
        host.calls()
            .iter()
            .filter(|c| c.target == "pricing")
            .count(),
        1
    );
    assert_eq!(
        ok(&i, json!({ "qty": 1, "audit": true })).await["steps"]["audit"]["status"],
        json!("ok")
    );
}

#[tokio::test]
async fn workflow_engine_stops_dependants_of_a_failed_step_and_checks_the_graph() {
    let host = FakeHost::builder()
        .on_call(|target, _| match target {
            "pricing" => Err(SandboxError::Host("pricing failed: no price".to_string())),
            _ => Ok(json!("fine")),
        })
        .build();
    let body = "async local(input) { return input; }";
    let steps = json!([
        { "id": "a", "call": "pricing" },
        { "id": "b", "call": "dep", "after": ["a"] },
        { "id": "c", "method": "local", "input": { "n": 1 } }
    ]);
    let i = start_on(
        "BaseWorkflowEngine",
        body,
        json!({ "steps": steps }),
        host.clone(),
    )
    .await;
    fails_with(&i, json!({}), &["WorkflowError: workflow failed at step \"a\": HostError: host error: pricing failed: no price (not run: b)"]).await;
    assert!(host.calls().iter().all(|c| c.target != "dep"));
    // The trace travels on the error for a subclass to use.
    let probe = "async probe(steps) { try { await this.run({}, steps); } catch (e) { return { name: e.name, steps: e.steps }; } }";
    let p = start_on(
        "BaseWorkflowEngine",
        &format!("{body}\n{probe}"),
        json!({}),
        host.clone(),
    )
    .await;
    let caught = call(&p, "probe", json!([steps])).await;
    assert_eq!(caught["name"], json!("WorkflowError"));
    assert_eq!(caught["steps"]["a"]["status"], json!("failed"));
    assert_eq!(
        caught["steps"]["b"],
        json!({ "status": "skipped", "reason": "step \"a\" failed", "ms": 0 })
    );
    assert_eq!(caught["steps"]["c"]["output"], json!({ "n": 1 }));
    // An optional step may fail; its dependants still run.
    let optional = json!([{ "id": "a", "call": "pricing", "optional": true }, { "id": "b", "method": "local", "after": ["a"], "input": 2 }]);
    let out = call(&p, "run", json!([{}, optional])).await;
    assert_eq!(out["output"], json!(2));
    assert_eq!(out["steps"]["a"]["status"], json!("failed"));
    // The graph is checked before anything runs.
    for (steps, says) in [
        (
            json!([{ "id": "a", "method": "local", "after": ["b"] }, { "id": "b", "method": "local", "after": ["c"] }, { "id": "c", "method": "local", "input": "$steps.a.output" }]),
            "steps: the steps form a cycle: a → b → c → a",
        ),
        (
            json!([{ "id": "a", "method": "local", "after": ["zz"] }]),
            "steps[0]: depends on an unknown step \"zz\" (steps: a)",
        ),
        (
            json!([{ "id": "a", "method": "local" }, { "id": "a", "call": "dep" }]),
            "steps[1].id: \"a\" is also the id of steps[0]",
        ),
        (
            json!([{ "id": "a", "method": "local", "input": { "x": "$inptu.n" } }]),
            "steps[0].input.x: \"$inptu.n\" refers to nothing",
        ),
        (
            json!([{ "id": "a", "method": "nope" }]),
            "steps[0].method: the class has no method \"nope\"",
        ),
        (
            json!([{ "id": "a", "call": "dep", "method": "local" }]),
            "steps[0]: a step has either \"call\"",
        ),
    ] {
        call_fails_with(&p, "run", json!([{}, steps]), &["InputError", says]).await;
    }
    assert!(host.calls().iter().all(|c| c.target != "dep"));
}

#[tokio::test]
async fn task_scheduler_computes_next_runs() {
    let i = start("BaseTaskScheduler", "", json!({})).await;
    // 2024-01-01T10:30:00Z.
    let from = 1_704_105_000_000_i64;
    let hour = 3_600_000_i64;
    assert_eq!(
        ok(
            &i,
            json!({ "op": "nextRun", "spec": { "everyMs": hour }, "from": from })
        )
        .await,
        json!({ "at": from + hour / 2 })
    );
    assert_eq!(
        call(&i, "nextRun", json!([{ "everyMs": 60_000 }, from])).await,
        json!(from + 60_000)
    );
    assert_eq!(
        call(&i, "nextRun", json!([{ "at": "09:15" }, from])).await,
        json!(from + 22 * hour + 45 * 60_000)
    );
    assert_eq!(
        call(&i, "nextRun", json!([{ "at": ["09:15", "18:00"] }, from])).await,
        json!(from + 7 * hour + 30 * 60_000)
    );
    // Exactly at a run time, the next one is a day later.
    assert_eq!(
        call(&i, "nextRun", json!([{ "at": "10:30" }, from])).await,
        json!(from + 24 * hour)
    );
    call_fails_with(
        &i,
        "nextRun",
        json!([{ "at": "25:00" }, from]),
        &["InputError: spec.at: expected a UTC time \"HH:MM\" (00:00 to 23:59), got \"25:00\""],
    )
    .await;
    call_fails_with(
        &i,
        "nextRun",
        json!([{ "cron": "* * * * *" }, from]),
        &["spec: expected {everyMs} or {at: \"HH:MM\"}, got keys cron"],
    )
    .await;
    call_fails_with(
        &i,
        "nextRun",
        json!([{ "everyMs": 0 }, from]),
        &["spec.everyMs: expected an integer ≥ 1, got 0"],
    )
    .await;
    fails_with(&i, json!({ "op": "sometime" }), &["input.op: expected one of \"after\", \"every\", \"next\", \"cancel\", \"list\", \"nextRun\""]).await;
    assert!(
        ok(&i, json!({ "op": "nextRun", "spec": { "everyMs": 1000 } })).await["at"].is_number()
    );
}

#[tokio::test]
async fn task_scheduler_schedules_through_the_host() {
    let host = FakeHost::echo();
    let i = start_granted(
        "BaseTaskScheduler",
        "",
        json!({ "target": "audit" }),
        host.clone(),
        &["schedule"],
        &[],
    )
    .await;
    assert_eq!(
        ok(
            &i,
            json!({ "op": "after", "ms": 500, "target": "dep", "input": { "x": 1 } })
        )
        .await,
        json!({ "id": "s-1" })
    );
    assert_eq!(
        ok(
            &i,
            json!({ "op": "every", "ms": 1000, "input": { "tick": true } })
        )
        .await,
        json!({ "id": "s-2" })
    );
    let before = now_ms();
    let next = ok(&i, json!({ "op": "next", "spec": { "everyMs": 60000 } })).await;
    let after = now_ms();
    assert_eq!(next["id"], json!("s-3"));
    let at = next["at"].as_u64().unwrap_or_default();
    assert!(
        at % 60_000 == 0 && at > before && at <= after + 60_000,
        "{next}"
    );
    let booked = host.scheduled();
    assert_eq!(booked.len(), 3);
    assert_eq!(
        (
            booked[0].1.target.as_str(),
            booked[0].1.delay,
            booked[0].1.every,
            booked[0].1.input.clone()
        ),
        ("dep", Duration::from_millis(500), None, json!({ "x": 1 }))
    );
    assert_eq!(
        (booked[1].1.target.as_str(), booked[1].1.every),
        ("audit", Some(Duration::from_secs(1)))
    );
    assert!(
        booked[2].1.delay <= Duration::from_secs(60),
        "{:?}",
        booked[2].1
    );
    let listed = ok(&i, json!({ "op": "list" })).await["schedules"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    assert_eq!(
        (listed[1]["kind"].clone(), listed[1]["intervalMs"].clone()),
        (json!("every"), json!(1000))
    );
    assert_eq!(
        ok(&i, json!({ "op": "cancel", "id": "s-1" })).await,
        json!({ "cancelled": true })
    );
    assert_eq!(
        ok(&i, json!({ "op": "cancel", "id": "s-1" })).await,
        json!({ "cancelled": false })
    );
    fails_with(
        &i,
        json!({ "op": "every", "ms": 50 }),
        &["InputError: ms: expected an integer ≥ 100, got 50"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "after", "ms": -5 }),
        &["ms: expected an integer ≥ 0, got -5"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "after", "ms": 10, "target": 7 }),
        &["target: expected a function name, got 7"],
    )
    .await;
    // The host decides which targets are allowed.
    match i
        .execute(
            json!({ "op": "after", "ms": 10, "target": "stranger" }),
            meta(),
        )
        .await
    {
        Err(error) => assert!(
            error.to_string().contains("not a declared dependency"),
            "{error}"
        ),
        Ok(output) => panic!("scheduled an undeclared target: {output}"),
    }
    let untargeted =
        start_granted("BaseTaskScheduler", "", json!({}), host, &["schedule"], &[]).await;
    fails_with(
        &untargeted,
        json!({ "op": "after", "ms": 10 }),
        &["ConfigError: settings.target: expected the function to call"],
    )
    .await;
}

#[tokio::test]
async fn process_manager_moves_jobs_through_their_lifecycle() {
    let host = FakeHost::echo();
    let i = start_on("BaseProcessManager", "", json!({}), host.clone()).await;
    let created = ok(
        &i,
        json!({ "op": "start", "id": "job1", "data": { "n": 1 } }),
    )
    .await;
    assert_eq!(
        (created["state"].clone(), created["history"].clone()),
        (json!("created"), json!([]))
    );
    assert_eq!(host.kv().get("process/job1"), Some(created.clone()));
    let running = ok(&i, json!({ "op": "send", "id": "job1", "event": "start" })).await;
    assert_eq!(running["state"], json!("running"));
    fails_with(&i, json!({ "op": "send", "id": "job1", "event": "resume" }), &["InputError: event: process \"job1\" in state running cannot take \"resume\" (allowed: pause, complete, fail, cancel)"]).await;
    ok(&i, json!({ "op": "send", "id": "job1", "event": "pause" })).await;
    ok(&i, json!({ "op": "send", "id": "job1", "event": "resume" })).await;
    let done = ok(
        &i,
        json!({ "op": "send", "id": "job1", "event": "complete", "data": { "out": 5 } }),
    )
    .await;
    assert_eq!(done["state"], json!("completed"));
    assert_eq!(done["data"], json!({ "n": 1, "out": 5 }));
    let steps: Vec<(Value, Value, Value)> = done["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| (e["from"].clone(), e["event"].clone(), e["to"].clone()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        steps,
        [
            (json!("created"), json!("start"), json!("running")),
            (json!("running"), json!("pause"), json!("paused")),
            (json!("paused"), json!("resume"), json!("running")),
            (json!("running"), json!("complete"), json!("completed")),
        ]
    );
    assert!(
        done["history"][0]["at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    fails_with(
        &i,
        json!({ "op": "send", "id": "job1", "event": "cancel" }),
        &["cannot take \"cancel\" (it is completed, a final state)"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "send", "id": "ghost", "event": "start" }),
        &["NotFound: id: no process \"ghost\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "start", "id": "job1" }),
        &["ConflictError: process \"job1\" already exists (state completed)"],
    )
    .await;
    fails_with(
        &i,
        json!({ "op": "start", "id": "" }),
        &["id: expected a non-empty string"],
    )
    .await;
    ok(&i, json!({ "op": "start", "id": "job2" })).await;
    assert_eq!(
        ok(&i, json!({ "op": "list" })).await["processes"]
            .as_array()
            .map(|p| p
                .iter()
                .map(|p| (p["id"].clone(), p["state"].clone()))
                .collect::<Vec<_>>()),
        Some(vec![
            (json!("job1"), json!("completed")),
            (json!("job2"), json!("created"))
        ])
    );
    assert_eq!(
        ok(&i, json!({ "op": "list", "state": "created" })).await["processes"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        ok(&i, json!({ "op": "status", "id": "job2" })).await["process"]["state"],
        json!("created")
    );
    assert_eq!(
        ok(&i, json!({ "op": "status", "id": "nope" })).await,
        json!({ "process": null })
    );
}

#[tokio::test]
async fn process_manager_takes_a_custom_machine_and_a_veto() {
    let body = "async onTransition(process, t) { if (t.event === 'approve' && !process.data.signed) throw new Error('approval needs a signature'); }";
    let config = json!({
        "initial": "draft", "terminal": ["approved", "rejected"], "states": null,
        "transitions": { "draft": { "submit": "review" }, "review": { "approve": "approved", "reject": "rejected", "revise": "draft" } },
        "historyLimit": 2
    });
    let i = start("BaseProcessManager", body, config).await;
    assert_eq!(
        ok(&i, json!({ "op": "start", "id": 1 })).await["state"],
        json!("draft")
    );
    ok(&i, json!({ "op": "send", "id": 1, "event": "submit" })).await;
    fails_with(
        &i,
        json!({ "op": "send", "id": 1, "event": "approve" }),
        &["approval needs a signature"],
    )
    .await;
    // The veto left the process as it was.
    assert_eq!(
        ok(&i, json!({ "op": "status", "id": 1 })).await["process"]["state"],
        json!("review")
    );
    ok(&i, json!({ "op": "send", "id": 1, "event": "revise" })).await;
    ok(&i, json!({ "op": "send", "id": 1, "event": "submit" })).await;
    let approved = ok(
        &i,
        json!({ "op": "send", "id": 1, "event": "approve", "data": { "signed": true } }),
    )
    .await;
    assert_eq!(approved["state"], json!("approved"));
    assert_eq!(approved["history"].as_array().map(Vec::len), Some(2));
    let broken = start(
        "BaseProcessManager",
        "",
        json!({ "transitions": { "created": { "go": "runing" } } }),
    )
    .await;
    fails_with(
        &broken,
        json!({ "op": "start", "id": "x" }),
        &["ConfigError: settings.transitions: state \"runing\" has no transitions and is not in settings.terminal"],
    )
    .await;
    let declared = start(
        "BaseProcessManager",
        "",
        json!({ "states": ["created", "running", "completed"], "terminal": ["completed"],
                "transitions": { "created": { "go": "runing" } } }),
    )
    .await;
    fails_with(
        &declared,
        json!({ "op": "start", "id": "x" }),
        &["ConfigError: settings.transitions.created.go: \"runing\" is not one of settings.states (created, running, completed)"],
    )
    .await;
}

#[tokio::test]
async fn orchestrator_fans_out_with_bounded_concurrency_and_fans_in() {
    let host = FakeHost::builder()
        .on_call(|target, input| {
            if input.get("fail").is_some() {
                return Err(SandboxError::Host(format!("{target} refused")));
            }
            Ok(json!({ "target": target, "v": input["v"].clone() }))
        })
        .build();
    let body = "
      inFlight = 0; maxInFlight = 0;
      async slowSquare(x) {
        this.inFlight++; this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        await this.ctx.call('dep', { v: x });
        this.inFlight--;
        return x * x;
      }
      peak() { return this.maxInFlight; }
      product(values) { return values.reduce((a, b) => a * b, 1); }";
    let i = start_on(
        "BaseOrchestrator",
        body,
        json!({ "target": "dep" }),
        host.clone(),
    )
    .await;
    let out = ok(&i, json!({ "inputs": [{ "v": 1 }, { "v": 2, "fail": true }, { "v": 3 }], "reduce": { "op": "sum", "field": "v" } })).await;
    assert_eq!(
        out["results"],
        json!([
            { "index": 0, "ok": true, "result": { "target": "dep", "v": 1 } },
            { "index": 1, "ok": false, "error": "HostError: host error: dep refused" },
            { "index": 2, "ok": true, "result": { "target": "dep", "v": 3 } }
        ])
    );
    assert_eq!(out["value"], json!(4));
    let squares = call(
        &i,
        "fanOut",
        json!([{ "method": "slowSquare" }, [1, 2, 3, 4, 5, 6, 7], { "concurrency": 3 }]),
    )
    .await;
    let values: Vec<Value> = squares
        .as_array()
        .map(|r| r.iter().map(|r| r["result"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(values, [1, 4, 9, 16, 25, 36, 49].map(|v| json!(v)));
    assert_eq!(call(&i, "peak", json!([])).await, json!(3));
    assert_eq!(
        call(&i, "fanIn", json!([squares, { "op": "avg" }])).await,
        json!(20)
    );
    assert_eq!(
        call(&i, "fanIn", json!([squares, "product"])).await,
        json!(25_401_600)
    );
    assert_eq!(
        call(
            &i,
            "fanIn",
            json!([[{ "a": [1] }, { "a": [2, 3] }, { "b": 1 }], { "op": "concat", "field": "a" }])
        )
        .await,
        json!([1, 2, 3])
    );
    assert_eq!(
        call(
            &i,
            "fanIn",
            json!([[{ "a": 1 }, { "b": 2 }, { "a": 3 }], "merge"])
        )
        .await,
        json!({ "a": 3, "b": 2 })
    );
    assert_eq!(
        call(&i, "fanIn", json!([[1, null, 3], { "op": "count" }])).await,
        json!(2)
    );
    assert_eq!(call(&i, "fanIn", json!([[4, 9, 2], "max"])).await, json!(9));
    // failFast: nothing new starts after the first failure.
    let before = host.calls().len();
    let fast = call(&i, "fanOut", json!(["dep", [{ "fail": 1 }, { "v": 1 }, { "v": 2 }], { "concurrency": 1, "failFast": true }])).await;
    assert_eq!(
        fast[1],
        json!({ "index": 1, "ok": false, "skipped": true, "error": "not started: an earlier call failed (failFast)" })
    );
    assert_eq!(host.calls().len(), before + 1);
    let gathered = ok(
        &i,
        json!({ "targets": ["pricing", { "method": "slowSquare" }], "input": 3 }),
    )
    .await;
    assert_eq!(
        gathered["results"],
        json!([
            { "target": "pricing", "ok": true, "result": { "target": "pricing", "v": null } },
            { "target": "slowSquare", "ok": true, "result": 9 }
        ])
    );
    fails_with(
        &i,
        json!({ "inputs": "x" }),
        &["InputError: inputs: expected an array"],
    )
    .await;
    fails_with(
        &i,
        json!({ "inputs": [1], "reduce": { "op": "median" } }),
        &["reducer.op: expected one of \"sum\""],
    )
    .await;
    call_fails_with(
        &i,
        "fanIn",
        json!([[1, "x"], "sum"]),
        &["results[1]: expected a finite number, got \"x\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "inputs": [1], "target": { "method": "nope" } }),
        &["target.method: the class has no method \"nope\""],
    )
    .await;
    fails_with(
        &i,
        json!({ "targets": [] }),
        &["targets: expected at least one target"],
    )
    .await;
    let untargeted = start("BaseOrchestrator", "", json!({})).await;
    fails_with(
        &untargeted,
        json!({ "inputs": [1] }),
        &["ConfigError: settings.target"],
    )
    .await;
}

/// `cargo test -p klf-actors --release -- --ignored --nocapture library_numbers`
#[tokio::test]
#[ignore = "measurement, not a test"]
async fn library_numbers() {
    let sources = [
        (
            "BaseFunction only",
            "import { BaseFunction } from \"klf:base\";\n\
          export default class F extends BaseFunction { async execute(input) { return input; } }\n",
        ),
        (
            "one part (BaseDataProcessor)",
            "import { BaseDataProcessor } from \"klf:base\";\n\
          export default class F extends BaseDataProcessor {}\n",
        ),
        (
            "every part (import *)",
            "import * as klf from \"klf:base\";\n\
          export default class F extends klf.BaseFunction { async execute(input) { return input; } }\n",
        ),
    ];
    for (label, source) in sources {
        let parts = compile::Parts::needed_by(source);
        let begun = std::time::Instant::now();
        let bytecode = compile::base_bytecode(parts).map(<[u8]>::len).unwrap_or(0);
        let compiled = begun.elapsed();
        let instance = start_code(code(source.to_string(), json!({})), FakeHost::echo()).await;
        ok(&instance, json!([])).await;
        let idle = instance.heap_bytes();
        let begun = std::time::Instant::now();
        for _ in 0..50 {
            start_code(code(source.to_string(), json!({})), FakeHost::echo()).await;
        }
        let start = begun.elapsed() / 50;
        eprintln!(
            "{label}: klf:base bytecode {bytecode} bytes (compiled once, in {compiled:?}); \
             idle heap {idle} bytes; start {start:?}"
        );
    }
}
