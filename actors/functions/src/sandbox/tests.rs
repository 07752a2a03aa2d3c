//! Behaviour of the sandbox, one test per rule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::test_host::{FakeHost, Gate, wait_until};
use super::*;

fn code(source: &str) -> FunctionCode {
    FunctionCode {
        name: "subject".to_string(),
        version: "1.0.0".to_string(),
        kind: "test".to_string(),
        entry: "main.js".to_string(),
        source: source.to_string(),
        config: json!({ "window": 3 }),
        dependencies: vec!["series-cleaner".to_string()],
        capabilities: vec!["call".to_string(), "kv".to_string(), "log".to_string()],
        secrets: Vec::new(),
        http: Default::default(),
    }
}

/// A function whose `execute` body is `body` (with `input` and `ctx` in scope).
fn function(body: &str) -> String {
    format!(
        "import {{ BaseFunction }} from \"klf:base\";\n\
         export default class Subject extends BaseFunction {{\n\
           async execute(input, ctx) {{\n{body}\n}}\n\
         }}\n"
    )
}

fn limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 8 << 20,
        timeout: Duration::from_millis(300),
        max_output_bytes: 64 * 1024,
    }
}

async fn start_with(code: FunctionCode, host: Arc<FakeHost>) -> Result<Instance, SandboxError> {
    Instance::start(code, limits(), host).await
}

/// For memory bombs: time enough to reach the limit even in a debug build on a busy machine.
async fn start_patient(code: FunctionCode, host: Arc<FakeHost>) -> Instance {
    let limits = SandboxLimits {
        timeout: Duration::from_secs(10),
        ..limits()
    };
    match Instance::start(code, limits, host).await {
        Ok(instance) => instance,
        Err(error) => panic!("the function does not start: {error}"),
    }
}

/// For calls held at a gate: the test, not the clock, decides when they go on.
async fn start_unhurried(code: FunctionCode, host: Arc<FakeHost>) -> Instance {
    let limits = SandboxLimits {
        timeout: Duration::from_secs(60),
        ..limits()
    };
    match Instance::start(code, limits, host).await {
        Ok(instance) => instance,
        Err(error) => panic!("the function does not start: {error}"),
    }
}

fn unhurried() -> CallMeta {
    CallMeta::with_timeout(Duration::from_secs(60))
}

async fn start(source: &str) -> Instance {
    match start_with(code(source), FakeHost::echo()).await {
        Ok(instance) => instance,
        Err(error) => panic!("the function does not start: {error}"),
    }
}

fn meta() -> CallMeta {
    CallMeta::with_timeout(Duration::from_secs(5))
}

async fn run(instance: &Instance, input: Value) -> Result<Value, SandboxError> {
    instance.execute(input, meta()).await
}

#[tokio::test]
async fn executes_with_json_in_and_out() {
    let instance = start(&function(
        "return { sum: input.xs.reduce((a, b) => a + b, 0), id: this.id, type: this.type, \
         window: this.config.window, deps: this.dependencies, same: ctx.config === this.config };",
    ))
    .await;
    let output = run(&instance, json!({ "xs": [1, 2, 3.5] })).await;
    assert_eq!(
        output,
        Ok(
            json!({ "sum": 6.5, "id": "subject@1.0.0", "type": "test", "window": 3,
                   "deps": ["series-cleaner"], "same": true })
        )
    );
}

#[tokio::test]
async fn on_initialize_runs_once_across_many_calls() {
    let instance = start(
        "import { BaseFunction } from \"klf:base\";
         export default class Counter extends BaseFunction {
           async onInitialize() { this.inits = (this.inits ?? 0) + 1; this.calls = 0; }
           async onExecute(input) { this.calls += 1; }
           async execute(input) {
             await this.initialize();
             return { inits: this.inits, calls: this.calls };
           }
         }",
    )
    .await;
    for n in 1..=20 {
        assert_eq!(
            run(&instance, json!(null)).await,
            Ok(json!({ "inits": 1, "calls": n }))
        );
    }
}

#[tokio::test]
async fn on_error_runs_and_the_caller_gets_the_message() {
    let host = FakeHost::echo();
    let source = "import { BaseFunction } from \"klf:base\";
         export default class Failing extends BaseFunction {
           async onError(error) { this.ctx.log.error(`handled: ${error.message}`); }
           async execute(input) {
             if (input.kind === 'type') return null.x;
             throw new Error('boom ' + input.n);
           }
         }";
    let instance = match start_with(code(source), host.clone()).await {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    match run(&instance, json!({ "n": 7 })).await {
        Err(SandboxError::User { message, stack }) => {
            assert_eq!(message, "boom 7");
            let stack = stack.unwrap_or_default();
            assert!(stack.contains("main.js:6"), "stack names the line: {stack}");
        }
        other => panic!("expected a user error, got {other:?}"),
    }
    assert_eq!(
        host.logs(),
        vec![(LogLevel::Error, "handled: boom 7".to_string())]
    );
    match run(&instance, json!({ "kind": "type" })).await {
        Err(SandboxError::User { message, .. }) => {
            assert!(message.starts_with("TypeError: "), "{message}")
        }
        other => panic!("expected a user error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_syntax_error_has_its_line_and_column() {
    let source = "import { BaseFunction } from \"klf:base\";\n\
                  export default class Broken extends BaseFunction {\n\
                    async execute(input) {\n\
                      return input +* 2;\n\
                    }\n\
                  }\n";
    match start_with(code(source), FakeHost::echo()).await {
        Err(SandboxError::Syntax {
            message,
            line,
            column,
        }) => {
            assert!(!message.is_empty());
            assert_eq!(line, Some(4), "{message}");
            assert!(column.is_some(), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cpu_loop_stops_at_the_deadline_and_the_next_call_works() {
    let instance = start(&function(
        "if (input.spin) { while (true) {} } return 'ok';",
    ))
    .await;
    // The verdict names the deadline that stopped the loop; how long it took is only printed.
    let started = Instant::now();
    let deadline = CallMeta::with_timeout(Duration::from_millis(100));
    match instance.execute(json!({ "spin": true }), deadline).await {
        Err(SandboxError::Timeout { after }) => assert!(after <= Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    eprintln!(
        "a 100 ms deadline stopped the loop after {:?}",
        started.elapsed()
    );
    // The loop no longer holds the runtime: the next call runs on it.
    assert_eq!(
        run(&instance, json!({ "spin": false })).await,
        Ok(json!("ok"))
    );
    // The instance's own timeout applies when the caller allows more (five seconds).
    let result = instance.execute(json!({ "spin": true }), meta()).await;
    match result {
        Err(SandboxError::Timeout { after }) => assert!(after <= limits().timeout, "{after:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(run(&instance, json!({})).await, Ok(json!("ok")));
}

#[tokio::test]
async fn a_memory_bomb_is_out_of_memory_and_the_next_call_works() {
    let instance = start_patient(
        code(&function(
            "if (input.bomb) { const xs = []; while (true) xs.push('x'.repeat(16384) + xs.length); }
             this.calls = (this.calls ?? 0) + 1; return this.calls;",
        )),
        FakeHost::echo(),
    )
    .await;
    assert_eq!(run(&instance, json!({})).await, Ok(json!(1)));
    assert_eq!(
        run(&instance, json!({ "bomb": true })).await,
        Err(SandboxError::OutOfMemory {
            limit_bytes: 8 << 20
        })
    );
    // A fresh runtime serves the next call (its state starts over).
    assert_eq!(run(&instance, json!({})).await, Ok(json!(1)));
    assert!(instance.heap_bytes() < 2 << 20, "{}", instance.heap_bytes());
}

#[tokio::test]
async fn out_of_memory_caught_by_the_function_is_still_out_of_memory() {
    let host = FakeHost::echo();
    let source = function(
        "const kept = [];
         try { while (true) kept.push(new Array(16384).fill(kept.length)); }
         catch (e) { kept.length = 0; ctx.log('caught: ' + e.message); return 'swallowed'; }",
    );
    let instance = start_patient(code(&source), host.clone()).await;
    assert_eq!(
        run(&instance, json!({})).await,
        Err(SandboxError::OutOfMemory {
            limit_bytes: 8 << 20
        })
    );
    assert_eq!(
        host.logs(),
        vec![(LogLevel::Info, "caught: out of memory".to_string())],
        "the function did catch it"
    );
}

#[tokio::test]
async fn deep_recursion_is_an_ordinary_error() {
    let instance = start(&function("const f = (n) => f(n + 1) + 1; return f(0);")).await;
    match run(&instance, json!({})).await {
        Err(SandboxError::User { message, .. }) => assert!(message.contains("stack"), "{message}"),
        other => panic!("expected a user error, got {other:?}"),
    }
    assert!(matches!(
        run(&instance, json!({})).await,
        Err(SandboxError::User { .. })
    ));
}

#[tokio::test]
async fn start_fails_with_the_reason_initialize_failed() {
    let looping = "import { BaseFunction } from \"klf:base\";
        export default class F extends BaseFunction { async onInitialize() { while (true) {} } }";
    let result = start_with(code(looping), FakeHost::echo()).await;
    assert!(
        matches!(result, Err(SandboxError::Timeout { .. })),
        "{result:?}"
    );
    let throwing = "import { BaseFunction } from \"klf:base\";
        export default class F extends BaseFunction {
          async onInitialize() { throw new Error('no config'); }
        }";
    let result = start_with(code(throwing), FakeHost::echo()).await;
    assert!(
        matches!(&result, Err(SandboxError::User { message, .. }) if message == "no config"),
        "{result:?}"
    );
    let hungry = "import { BaseFunction } from \"klf:base\";
        export default class F extends BaseFunction {
          async onInitialize() {
            this.table = [];
            while (true) this.table.push(new Array(16384).fill(1));
          }
        }";
    let patient = SandboxLimits {
        timeout: Duration::from_secs(10),
        ..limits()
    };
    let result = Instance::start(code(hungry), patient, FakeHost::echo()).await;
    assert!(
        matches!(result, Err(SandboxError::OutOfMemory { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_host_answer_after_the_call_ended_is_harmless() {
    let gate = Gate::new();
    let host = FakeHost::builder().call_gate(gate.clone()).build();
    let source = function(
        "ctx.call('series-cleaner', 1).then(() => { this.late = (this.late ?? 0) + 1; });
         return 'left early';",
    );
    // Unhurried, so the held host call is still wanted when the gate opens.
    let instance = start_unhurried(code(&source), host.clone()).await;
    assert_eq!(
        instance.execute(json!({}), unhurried()).await,
        Ok(json!("left early"))
    );
    assert_eq!(
        host.calls_in_flight(),
        1,
        "the call ended before its answer"
    );
    gate.open();
    assert!(
        wait_until(Duration::from_secs(30), || host.calls_answered() == 1).await,
        "the host answers once the gate opens"
    );
    assert_eq!(run(&instance, json!({})).await, Ok(json!("left early")));
}

#[tokio::test]
async fn eval_and_function_constructors_are_blocked() {
    let instance = start(&function(
        "const attempts = {
           eval: () => eval('1'),
           indirectEval: () => (0, globalThis.eval)('1'),
           Function: () => Function('return 1')(),
           newFunction: () => new Function('return 1')(),
           constructor: () => (function () {}).constructor('return 1')(),
           arrow: () => (() => 1).constructor('return 1')(),
           async: () => (async function () {}).constructor('return 1'),
           generator: () => (function* () {}).constructor('return 1'),
           asyncGenerator: () => (async function* () {}).constructor('return 1'),
         };
         const results = {};
         for (const [name, attempt] of Object.entries(attempts)) {
           try { attempt(); results[name] = 'ran'; }
           catch (e) { results[name] = String(e.message); }
         }
         return results;",
    ))
    .await;
    let results = run(&instance, json!({})).await;
    let Ok(Value::Object(results)) = results else {
        panic!("unexpected {results:?}");
    };
    assert_eq!(results.len(), 9);
    for (name, result) in results {
        assert_eq!(result, json!("eval is not supported"), "{name}");
    }
}

#[tokio::test]
async fn no_ambient_io_is_reachable() {
    let instance = start(&function(
        "return ['setTimeout', 'setInterval', 'performance', 'require', 'process', 'std', 'os',
                 'fetch', 'XMLHttpRequest', 'WebSocket', 'print', 'console', '__klf_host__',
                 'scriptArgs']
           .filter((name) => typeof globalThis[name] !== 'undefined');",
    ))
    .await;
    assert_eq!(run(&instance, json!({})).await, Ok(json!([])));
}

#[tokio::test]
async fn blocking_and_backtracking_cannot_hold_the_runtime() {
    let instance = start(&function(
        "if (input.regex) return /^(a+)+$/.test('a'.repeat(40) + 'b');
         try { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); return 'waited'; }
         catch (e) { return e.message; }",
    ))
    .await;
    let refused = run(&instance, json!({})).await;
    assert!(
        matches!(&refused, Ok(Value::String(m)) if m != "waited"),
        "{refused:?}"
    );
    let result = instance
        .execute(
            json!({ "regex": true }),
            CallMeta::with_timeout(Duration::from_millis(100)),
        )
        .await;
    assert!(
        matches!(result, Err(SandboxError::Timeout { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn imports_other_than_klf_base_are_rejected() {
    for import in ["fs", "os", "std", "./x.js", "klf:other"] {
        let source = format!(
            "import {{ BaseFunction }} from \"klf:base\";\nimport * as m from \"{import}\";\n\
             export default class F extends BaseFunction {{ async execute() {{ return 1; }} }}"
        );
        match start_with(code(&source), FakeHost::echo()).await {
            Err(SandboxError::BadModule(message)) => {
                assert!(message.contains(&format!("\"{import}\"")), "{message}")
            }
            other => panic!("import of {import} gave {other:?}"),
        }
    }
    // Dynamic imports are refused the same way, at run time.
    let instance = start(&function(
        "try { await import('fs'); return 'imported'; } catch (e) { return e.message; }",
    ))
    .await;
    let refused = run(&instance, json!({})).await;
    assert!(
        matches!(&refused, Ok(Value::String(m)) if m.contains("may import only")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_module_without_a_base_function_class_is_a_bad_module() {
    for source in [
        "export const x = 1;",
        "export default { execute() { return 1; } };",
        "import { BaseFunction } from \"klf:base\"; export default class F {}",
        "import { BaseFunction } from \"klf:base\"; export default BaseFunction;",
    ] {
        let result = start_with(code(source), FakeHost::echo()).await;
        assert!(
            matches!(result, Err(SandboxError::BadModule(_))),
            "{source}: {result:?}"
        );
    }
}

#[tokio::test]
async fn kv_without_the_capability_is_denied() {
    let mut denied = code(&function(
        "if (input.catch) {
           try { await ctx.kv.get('a'); } catch (e) { return [e.name, e.message]; }
         }
         return await this.ctx.kv.get('a');",
    ));
    denied.capabilities = vec!["call".to_string()];
    let instance = match start_with(denied, FakeHost::echo()).await {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    match run(&instance, json!({})).await {
        Err(SandboxError::CapabilityDenied { capability, detail }) => {
            assert_eq!(capability, "kv");
            assert!(detail.contains("capabilities"), "{detail}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // The denial is an ordinary, catchable error inside the function.
    let caught = run(&instance, json!({ "catch": true })).await;
    assert!(
        matches!(&caught, Ok(Value::Array(v)) if v[0] == json!("CapabilityDenied")),
        "{caught:?}"
    );
}

#[tokio::test]
async fn kv_and_log_reach_the_host() {
    let host = FakeHost::echo();
    let source = function(
        "await ctx.kv.put('user:1', { n: input.n });
         await this.ctx.kv.put('user:2', 2);
         await ctx.kv.put('other', true);
         await ctx.kv.delete('user:2');
         ctx.log('plain', 1);
         ctx.log.warn({ careful: true });
         return { one: await ctx.kv.get('user:1'), two: await ctx.kv.get('user:2') ?? null,
                  keys: await ctx.kv.list('user:'), now: typeof ctx.now() };",
    );
    let instance = match start_with(code(&source), host.clone()).await {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(
        run(&instance, json!({ "n": 5 })).await,
        Ok(json!({ "one": { "n": 5 }, "two": null, "keys": ["user:1"], "now": "number" }))
    );
    assert_eq!(
        host.logs(),
        vec![
            (LogLevel::Info, "plain 1".to_string()),
            (LogLevel::Warn, "{\"careful\":true}".to_string())
        ]
    );
}

#[tokio::test]
async fn calling_an_undeclared_dependency_is_denied() {
    let host = FakeHost::echo();
    let instance = match start_with(
        code(&function("return await ctx.call('stranger@^1', {});")),
        host.clone(),
    )
    .await
    {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    match run(&instance, json!({})).await {
        Err(SandboxError::CapabilityDenied { capability, detail }) => {
            assert_eq!(capability, "call");
            assert!(detail.contains("\"stranger\""), "{detail}");
            assert!(detail.contains("series-cleaner"), "{detail}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    assert!(host.calls().is_empty());
}

#[tokio::test]
async fn a_declared_dependency_goes_to_the_host_and_the_result_composes() {
    let host = FakeHost::echo();
    // The design's example (§10), against a host that echoes.
    let source = "import { BaseFunction } from \"klf:base\";
        export default class MovingAverage extends BaseFunction {
          async onInitialize() { this.window = this.config.window; }
          async execute(input) {
            const clean = await this.ctx.call('series-cleaner@^1', { xs: input.xs });
            const xs = clean.input.xs;
            return { avg: xs.slice(-this.window).reduce((a, b) => a + b, 0) / this.window,
                     via: clean.target };
          }
        }";
    let instance = match start_with(code(source), host.clone()).await {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    let meta = CallMeta {
        deadline: Instant::now() + Duration::from_millis(200),
        call_depth: 3,
        trace_parent: Some("00-trace-span-01".to_string()),
    };
    let deadline = meta.deadline;
    assert_eq!(
        instance
            .execute(json!({ "xs": [1, 2, 3, 4, 5] }), meta)
            .await,
        Ok(json!({ "avg": 4, "via": "series-cleaner@^1" }))
    );
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    let (target, input, sent) = (&calls[0].target, &calls[0].input, &calls[0].meta);
    assert_eq!(target, "series-cleaner@^1");
    assert_eq!(input, &json!({ "xs": [1, 2, 3, 4, 5] }));
    assert_eq!(sent.deadline, deadline);
    assert_eq!(sent.call_depth, 3);
    assert_eq!(sent.trace_parent.as_deref(), Some("00-trace-span-01"));
}

#[tokio::test]
async fn a_failing_host_call_keeps_its_message() {
    let host = FakeHost::builder()
        .on_call(|target, _| Err(SandboxError::Host(format!("{target} failed: nope"))))
        .build();
    let instance = match start_with(
        code(&function("return await ctx.call('series-cleaner', 1);")),
        host,
    )
    .await
    {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(
        run(&instance, json!({})).await,
        Err(SandboxError::Host(
            "series-cleaner failed: nope".to_string()
        ))
    );
}

#[tokio::test]
async fn a_host_call_that_never_answers_times_out_at_the_deadline() {
    // A gate never opened: the host never answers.
    let host = FakeHost::builder().call_gate(Gate::new()).build();
    let instance = match start_with(
        code(&function(
            "if (input.wait) return await ctx.call('series-cleaner', {}); return 'ok';",
        )),
        host.clone(),
    )
    .await
    {
        Ok(instance) => instance,
        Err(error) => panic!("{error}"),
    };
    let started = Instant::now();
    let meta = CallMeta::with_timeout(Duration::from_millis(80));
    let deadline = meta.deadline;
    let result = instance.execute(json!({ "wait": true }), meta).await;
    match result {
        Err(SandboxError::Timeout { after }) => assert!(after <= Duration::from_millis(80)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Never before the deadline (a slow machine only makes this later).
    assert!(Instant::now() >= deadline, "timed out early");
    eprintln!(
        "an 80 ms deadline ended the wait after {:?}",
        started.elapsed()
    );
    // The host call carried the caller's deadline, and was given up rather than left waiting.
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].meta.deadline, deadline);
    assert!(
        wait_until(Duration::from_secs(30), || host.calls_in_flight() == 0).await,
        "the unanswered host call is dropped after the deadline"
    );
    assert_eq!(host.calls_answered(), 0);
    assert_eq!(run(&instance, json!({})).await, Ok(json!("ok")));
}

#[tokio::test]
async fn a_promise_that_never_settles_times_out() {
    let instance = start(&function("await new Promise(() => {}); return 1;")).await;
    let result = instance
        .execute(json!({}), CallMeta::with_timeout(Duration::from_millis(50)))
        .await;
    assert!(
        matches!(result, Err(SandboxError::Timeout { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn outputs_that_are_not_json_are_bad_output() {
    let instance = start(&function(
        "switch (input.kind) {
           case 'undefined': return undefined;
           case 'function': return () => 1;
           case 'cycle': { const a = {}; a.self = a; return a; }
           case 'bigint': return 10n;
           case 'big': return 'x'.repeat(70 * 1024);
           default: return 'fine';
         }",
    ))
    .await;
    for kind in ["undefined", "function", "cycle", "bigint", "big"] {
        let result = run(&instance, json!({ "kind": kind })).await;
        assert!(
            matches!(result, Err(SandboxError::BadOutput(_))),
            "{kind}: {result:?}"
        );
    }
    assert_eq!(run(&instance, json!({})).await, Ok(json!("fine")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_instance_all_complete() {
    const CALLS: usize = 32;
    let gate = Gate::new();
    let host = FakeHost::builder().call_gate(gate.clone()).build();
    let source = function(
        "const answer = await ctx.call('series-cleaner', { n: input.n });
         return { n: answer.input.n };",
    );
    // Unhurried: every call waits at the gate until all of them are there.
    let instance = Arc::new(start_unhurried(code(&source), host.clone()).await);
    let calls: Vec<_> = (0..CALLS)
        .map(|n| {
            let instance = instance.clone();
            tokio::spawn(async move {
                let meta = CallMeta {
                    trace_parent: Some(format!("trace-{n}")),
                    ..unhurried()
                };
                instance.execute(json!({ "n": n }), meta).await
            })
        })
        .collect();
    // Overlapping: every call is waiting for the host at the same time, none holding up the rest.
    assert!(
        wait_until(Duration::from_secs(30), || host.calls_in_flight() == CALLS).await,
        "only {} of {CALLS} calls reached the host together",
        host.calls_in_flight()
    );
    gate.open();
    for (n, call) in calls.into_iter().enumerate() {
        match call.await {
            Ok(Ok(output)) => assert_eq!(output["n"], json!(n)),
            other => panic!("call {n}: {other:?}"),
        }
    }
    assert_eq!(host.most_calls_in_flight(), CALLS);
    // Each host call carried its own call's meta (through the per-call ctx).
    for call in host.calls() {
        assert_eq!(
            call.meta.trace_parent,
            Some(format!("trace-{}", call.input["n"]))
        );
    }
}

#[tokio::test]
async fn validate_and_test_have_sensible_defaults() {
    let instance = start(
        "import { BaseFunction } from \"klf:base\";
         export default class Double extends BaseFunction {
           static tests = [
             { name: 'doubles', input: 2, expect: 4 },
             { input: 5, expect: 11 },
             { name: 'rejects text', input: 'a', error: 'numbers only' },
           ];
           async execute(input) {
             if (typeof input !== 'number') throw new Error('numbers only');
             return input * 2;
           }
         }",
    )
    .await;
    assert_eq!(instance.validate().await, Ok(true));
    let report = instance.test().await;
    assert_eq!(
        report,
        Ok(json!({
            "passed": 2,
            "failed": 1,
            "results": [
                { "name": "doubles", "passed": true },
                { "name": "case 2", "passed": false, "expected": 11, "actual": 10 },
                { "name": "rejects text", "passed": true },
            ]
        }))
    );
    let empty = start(
        "import { BaseFunction } from \"klf:base\";
         export default class Empty extends BaseFunction {}",
    )
    .await;
    assert_eq!(empty.validate().await, Ok(false));
    assert!(matches!(
        run(&empty, json!({})).await,
        Err(SandboxError::User { .. })
    ));
}

#[tokio::test]
async fn the_runner_cannot_be_driven_by_the_function() {
    let instance = start(&function(
        "try { await globalThis.__klf_runner__.run('guess', 1, {}); return 'ran'; }
         catch (e) { return e.message; }",
    ))
    .await;
    assert_eq!(
        run(&instance, json!({})).await,
        Ok(json!("the KLF runner is driven by the host only"))
    );
}

#[tokio::test]
async fn the_instance_actor_serves_calls() {
    let instance = start(&function("return input * 3;")).await;
    let (actor, handle) =
        match ractor::Actor::spawn(None, InstanceActor, std::sync::Arc::new(instance)).await {
            Ok(spawned) => spawned,
            Err(error) => panic!("{error}"),
        };
    let tripled = ractor::call!(actor, |reply| InstanceMsg::Execute {
        input: json!(14),
        meta: meta(),
        reply
    });
    assert!(matches!(tripled, Ok(Ok(v)) if v == json!(42)));
    let valid = ractor::call!(actor, |reply| InstanceMsg::Validate { reply });
    assert!(matches!(valid, Ok(Ok(true))));
    let heap = ractor::call!(actor, |reply| InstanceMsg::HeapBytes { reply });
    assert!(matches!(heap, Ok(bytes) if bytes > 0));
    actor.stop(None);
    let _ = handle.await;
}

/// `cargo test -p klf-actors --release -- --ignored --nocapture sandbox_numbers`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn sandbox_numbers() {
    let rounds = 2_000;
    let trivial = function("return { doubled: input.x * 2 };");
    let task = tokio::spawn(async move {
        let host = FakeHost::echo();
        let mut starts = Vec::with_capacity(200);
        let mut instance = None;
        for _ in 0..200 {
            let begun = Instant::now();
            let started = start_with(code(&trivial), host.clone()).await;
            starts.push(begun.elapsed());
            instance = started.ok();
        }
        let Some(instance) = instance else {
            panic!("no instance");
        };
        let idle_heap = instance.heap_bytes();
        // A restart with the bytecode already compiled (what a recycle after OOM costs).
        let blueprint = Arc::new(engine::Blueprint {
            code: code(&trivial),
            limits: limits(),
            host: host.clone(),
            bytecode: Default::default(),
        });
        let mut restarts = Vec::with_capacity(200);
        for _ in 0..200 {
            let begun = Instant::now();
            let started = engine::Engine::start(blueprint.clone()).await;
            restarts.push(begun.elapsed());
            assert!(started.is_ok());
        }
        let mut calls = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let begun = Instant::now();
            let result = instance.execute(json!({ "x": i }), meta()).await;
            calls.push(begun.elapsed());
            assert!(result.is_ok());
        }
        let composing = match start_with(
            code(&function("return await ctx.call('series-cleaner', input);")),
            host,
        )
        .await
        {
            Ok(instance) => instance,
            Err(error) => panic!("{error}"),
        };
        let mut host_calls = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let begun = Instant::now();
            let result = composing.execute(json!(i), meta()).await;
            host_calls.push(begun.elapsed());
            assert!(result.is_ok());
        }
        (starts, restarts, calls, host_calls, idle_heap)
    });
    let Ok((mut starts, mut restarts, mut calls, mut host_calls, idle_heap)) = task.await else {
        panic!("measurement failed");
    };
    let percentile = |xs: &mut Vec<Duration>, p: f64| {
        xs.sort();
        xs[((xs.len() - 1) as f64 * p) as usize]
    };
    eprintln!(
        "start: p50 {:?} p99 {:?}\nrestart (bytecode cached): p50 {:?} p99 {:?}\n\
         execute (trivial): p50 {:?} p99 {:?}\n\
         execute with one ctx.call: p50 {:?} p99 {:?}\nidle instance heap: {} bytes",
        percentile(&mut starts, 0.5),
        percentile(&mut starts, 0.99),
        percentile(&mut restarts, 0.5),
        percentile(&mut restarts, 0.99),
        percentile(&mut calls, 0.5),
        percentile(&mut calls, 0.99),
        percentile(&mut host_calls, 0.5),
        percentile(&mut host_calls, 0.99),
        idle_heap
    );

    // Overlap: 32 calls each waiting 20 ms for the host, issued at once, against one after another.
    let waiting = match start_with(
        code(&function("return await ctx.call('series-cleaner', input);")),
        FakeHost::builder()
            .call_delay(Duration::from_millis(20))
            .build(),
    )
    .await
    {
        Ok(instance) => Arc::new(instance),
        Err(error) => panic!("{error}"),
    };
    let begun = Instant::now();
    let overlapping: Vec<_> = (0..32)
        .map(|i| {
            let waiting = waiting.clone();
            tokio::spawn(async move { waiting.execute(json!(i), meta()).await })
        })
        .collect();
    for call in overlapping {
        assert!(matches!(call.await, Ok(Ok(_))));
    }
    let together = begun.elapsed();
    let begun = Instant::now();
    for i in 0..32 {
        assert!(waiting.execute(json!(i), meta()).await.is_ok());
    }
    let serial = begun.elapsed();
    // CPU-bound calls gain nothing from overlap; check they lose nothing either.
    let busy = match start_with(
        code(&function(
            "let s = 0; for (let i = 0; i < 20000; i++) s += i; return s;",
        )),
        FakeHost::echo(),
    )
    .await
    {
        Ok(instance) => Arc::new(instance),
        Err(error) => panic!("{error}"),
    };
    let begun = Instant::now();
    for _ in 0..256 {
        assert!(busy.execute(json!(null), meta()).await.is_ok());
    }
    let busy_serial = begun.elapsed();
    let begun = Instant::now();
    let overlapping: Vec<_> = (0..256)
        .map(|_| {
            let busy = busy.clone();
            tokio::spawn(async move { busy.execute(json!(null), meta()).await })
        })
        .collect();
    for call in overlapping {
        assert!(matches!(call.await, Ok(Ok(_))));
    }
    let busy_together = begun.elapsed();
    eprintln!(
        "32 calls awaiting a 20 ms host call: together {together:?}, one after another \
         {serial:?}\n256 CPU-bound calls: together {busy_together:?}, one after another \
         {busy_serial:?}"
    );
}
