//! The base library `klf:base` (`docs/base-library.md`): every class run as a real function in a
//! real [`Instance`], for its normal behaviour (computed values asserted) and for bad input (a
//! clear error naming the field, and the instance keeps serving).
//!
//! One module per part of the library (`library/<part>.js`); this one holds what they share:
//! starting a subject instance on a [`FakeHost`] and asserting on what its calls return.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::test_host::FakeHost;
use super::*;

mod common;
mod communication;
mod data;
mod intelligence;
mod security;
mod workflow;

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
        http: Default::default(),
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

/// What a test starts instances of: a library class with `body` added, on a host (a fresh echoing
/// one unless given), granted `call`, `kv`, `log` and any more capabilities, with secrets declared.
/// Set up once per test and started once per config the test needs; each setter gives a copy.
#[derive(Clone)]
struct Subject<'a> {
    class: &'a str,
    body: &'a str,
    host: Arc<FakeHost>,
    capabilities: &'a [&'a str],
    secrets: &'a [&'a str],
}

impl<'a> Subject<'a> {
    fn of(class: &'a str) -> Self {
        Self {
            class,
            body: "",
            host: FakeHost::echo(),
            capabilities: &[],
            secrets: &[],
        }
    }

    /// Methods and fields added to the subclass.
    fn body(&self, body: &'a str) -> Self {
        Self {
            body,
            ..self.clone()
        }
    }

    fn on(&self, host: &Arc<FakeHost>) -> Self {
        Self {
            host: host.clone(),
            ..self.clone()
        }
    }

    /// Capabilities granted beyond `call`, `kv` and `log`.
    fn grant(&self, capabilities: &'a [&'a str]) -> Self {
        Self {
            capabilities,
            ..self.clone()
        }
    }

    /// The manifest's `secrets`.
    fn secrets(&self, secrets: &'a [&'a str]) -> Self {
        Self {
            secrets,
            ..self.clone()
        }
    }

    /// An instance configured with `config`.
    async fn start(&self, config: Value) -> Instance {
        let mut code = code(source(self.class, self.body), config);
        code.capabilities
            .extend(self.capabilities.iter().map(|c| c.to_string()));
        code.secrets = self.secrets.iter().map(|s| s.to_string()).collect();
        start_code(code, self.host.clone()).await
    }
}

/// The host's calls as `(target, input)`.
fn sent(host: &FakeHost) -> Vec<(String, Value)> {
    host.calls()
        .into_iter()
        .map(|call| (call.target, call.input))
        .collect()
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
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
