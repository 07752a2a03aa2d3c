//! `ctx.crypto`, `ctx.secret`, `ctx.model` and `ctx.schedule` as a function sees them: granted,
//! refused, and failing with errors a person can act on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::test_host::{FakeHost, model_reply};
use super::*;

/// A host with the `db-key` secret and a model that echoes the last message.
fn host() -> Arc<FakeHost> {
    FakeHost::builder()
        .secret("db-key", "hunter2")
        .model(|request| {
            let last = request.messages.last().map(|m| m.content.clone());
            Ok(model_reply(
                format!("echo: {}", last.unwrap_or_default()),
                request.messages.len() as u64,
                2,
            ))
        })
        .build()
}

fn code(body: &str, capabilities: &[&str], secrets: &[&str]) -> FunctionCode {
    FunctionCode {
        name: "subject".into(),
        version: "1.0.0".into(),
        kind: "test".into(),
        entry: "main.js".into(),
        source: format!(
            "import {{ BaseFunction }} from \"klf:base\";\n\
             export default class Subject extends BaseFunction {{\n\
               async execute(input, ctx) {{\n{body}\n}}\n\
             }}\n"
        ),
        config: json!({}),
        dependencies: vec!["report".into()],
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        secrets: secrets.iter().map(|c| c.to_string()).collect(),
        http: Default::default(),
    }
}

async fn run_with(
    host: Arc<FakeHost>,
    code: FunctionCode,
    input: Value,
) -> Result<Value, SandboxError> {
    let limits = SandboxLimits {
        memory_bytes: 8 << 20,
        timeout: Duration::from_secs(2),
        max_output_bytes: 64 * 1024,
    };
    let instance = Instance::start(code, limits, host).await?;
    instance
        .execute(input, CallMeta::with_timeout(Duration::from_secs(5)))
        .await
}

async fn run(body: &str, capabilities: &[&str], secrets: &[&str]) -> Result<Value, SandboxError> {
    run_with(host(), code(body, capabilities, secrets), json!({})).await
}

#[tokio::test]
async fn crypto_hashes_macs_and_seals() {
    let output = run(
        "const c = ctx.crypto;
         const key = c.generateKey();
         const sealed = c.encrypt('card 4111', { key, aad: 'order-7' });
         let tampered;
         try { c.decrypt(sealed, { key, aad: 'order-8' }); } catch (e) { tampered = e.name + ': ' + e.message; }
         const bySecret = c.encrypt('pii', { secret: 'db-key' });
         const mac = c.hmac('sha256', 'Jefe', 'what do ya want for nothing?');
         return {
           sha: c.hash('sha256', 'abc'),
           mac,
           ok: c.hmacVerify('sha256', 'Jefe', 'what do ya want for nothing?', mac),
           forged: c.hmacVerify('sha256', 'Jefe', 'what do ya want for nothing!', mac),
           roundTrip: c.decrypt(sealed, { key, aad: 'order-7' }),
           secretRoundTrip: c.decrypt(bySecret, { secret: 'db-key' }),
           alg: sealed.alg,
           tampered,
           uuid: c.randomUUID().length,
           same: c.equal('a', 'a') && !c.equal('a', 'b'),
         };",
        &["crypto", "secret"],
        &["db-key"],
    )
    .await
    .expect("crypto works");
    assert_eq!(
        output["sha"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        output["mac"],
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        (output["ok"].clone(), output["forged"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(output["roundTrip"], "card 4111");
    assert_eq!(output["secretRoundTrip"], "pii");
    assert_eq!(output["alg"], "chacha20-poly1305");
    assert!(
        output["tampered"]
            .as_str()
            .unwrap_or_default()
            .starts_with("CryptoError: crypto: decryption failed"),
        "{output}"
    );
    assert_eq!(
        (output["uuid"].clone(), output["same"].clone()),
        (json!(36), json!(true))
    );
}

#[tokio::test]
async fn crypto_errors_are_typed_and_name_the_problem() {
    let error = run("return ctx.crypto.hash('md5', 'x');", &["crypto"], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SandboxError::Crypto(m) if m.contains("known: sha256")),
        "{error}"
    );
    let error = run("return ctx.crypto.encrypt('x', {});", &["crypto"], &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("give the key"), "{error}");
    let error = run(
        "return ctx.crypto.encrypt('x', { key: 'short' });",
        &["crypto"],
        &[],
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("base64 of 32 bytes"), "{error}");
    let error = run("return ctx.crypto.hash('sha256', 'x');", &["log"], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SandboxError::CapabilityDenied { capability, .. } if capability == "crypto"),
        "{error}"
    );
}

#[tokio::test]
async fn secrets_need_the_capability_a_declaration_and_a_value() {
    assert_eq!(
        run("return ctx.secret('db-key');", &["secret"], &["db-key"]).await,
        Ok(json!("hunter2"))
    );
    let error = run("return ctx.secret('db-key');", &["log"], &["db-key"])
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::CapabilityDenied { .. }),
        "{error}"
    );
    let error = run("return ctx.secret('other');", &["secret"], &["db-key"])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not declared"), "{error}");
    let error = run("return ctx.secret('missing');", &["secret"], &["missing"])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SandboxError::Secret(m) if m.contains("not set on node")),
        "{error}"
    );
    // The key of `{secret}` encryption is never handed to JavaScript, but its rules are the same.
    let error = run(
        "return ctx.crypto.encrypt('x', { secret: 'db-key' });",
        &["crypto", "secret"],
        &[],
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("not declared"), "{error}");
}

#[tokio::test]
async fn the_model_answers_through_the_host_or_says_why_not() {
    let output = run(
        "return await ctx.model.complete({ system: 'be brief', prompt: 'hello' });",
        &["model"],
        &[],
    )
    .await
    .expect("model answers");
    assert_eq!(
        output,
        json!({ "text": "echo: hello", "model": "test-model",
                "usage": { "inputTokens": 2, "outputTokens": 2 } })
    );
    let error = run("return await ctx.model.complete({});", &["model"], &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("give `messages`"), "{error}");
    let error = run(
        "return await ctx.model.complete({ messages: [{ role: 'wizard', content: 'x' }] });",
        &["model"],
        &[],
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("messages[0].role"), "{error}");
    let error = run(
        "return await ctx.model.complete({ prompt: 'x' });",
        &["log"],
        &[],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, SandboxError::CapabilityDenied { .. }),
        "{error}"
    );

    let without = FakeHost::echo();
    let error = run_with(
        without,
        code(
            "return await ctx.model.complete({ prompt: 'x' });",
            &["model"],
            &[],
        ),
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, SandboxError::ModelUnavailable(m) if m.contains("KLF_MODEL_BASE_URL")),
        "{error}"
    );
}

#[tokio::test]
async fn schedules_reach_only_declared_targets_with_sane_intervals() {
    let host = FakeHost::echo();
    let output = run_with(
        host.clone(),
        code(
            "const a = ctx.schedule.after(50, 'report', { daily: true });
             const b = ctx.schedule.every(1000, 'subject', { tick: 1 });
             return { a, b, list: ctx.schedule.list(), cancelled: ctx.schedule.cancel('s-1'),
                      unknown: ctx.schedule.cancel('nope') };",
            &["schedule"],
            &[],
        ),
        json!({}),
    )
    .await
    .expect("schedules");
    assert_eq!(output["a"], "s-1");
    assert_eq!(output["b"], "s-2");
    // The list is the host's book before the cancel: both schedules, as JavaScript names them.
    let list = &output["list"];
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(
        (
            list[0]["id"].clone(),
            list[0]["kind"].clone(),
            list[0]["intervalMs"].clone()
        ),
        (json!("s-1"), json!("after"), Value::Null)
    );
    assert_eq!(
        (
            list[1]["id"].clone(),
            list[1]["kind"].clone(),
            list[1]["intervalMs"].clone()
        ),
        (json!("s-2"), json!("every"), json!(1000))
    );
    assert_eq!(
        (output["cancelled"].clone(), output["unknown"].clone()),
        (json!(true), json!(false))
    );
    let scheduled: Vec<ScheduleRequest> = host.scheduled().into_iter().map(|(_, s)| s).collect();
    assert_eq!(scheduled.len(), 2);
    assert_eq!(scheduled[0].delay, Duration::from_millis(50));
    assert_eq!(scheduled[0].every, None);
    assert_eq!(scheduled[1].every, Some(Duration::from_secs(1)));
    assert_eq!(scheduled[1].input, json!({ "tick": 1 }));

    for (body, expected) in [
        (
            "return ctx.schedule.every(10, 'report', {});",
            "at least 100 ms",
        ),
        (
            "return ctx.schedule.after(-1, 'report', {});",
            "non-negative",
        ),
        (
            "return ctx.schedule.after(1e12, 'report', {});",
            "longer than a week",
        ),
        (
            "return ctx.schedule.after(10, 'stranger', {});",
            "not a declared dependency",
        ),
    ] {
        let error = run(body, &["schedule"], &[]).await.unwrap_err();
        assert!(error.to_string().contains(expected), "{body}: {error}");
    }
    let error = run("return ctx.schedule.list();", &["log"], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::CapabilityDenied { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn an_absurd_schedule_delay_is_a_clear_error_and_the_instance_keeps_serving() {
    let host = FakeHost::echo();
    let limits = SandboxLimits {
        memory_bytes: 8 << 20,
        timeout: Duration::from_secs(2),
        max_output_bytes: 64 * 1024,
    };
    let instance = Instance::start(
        code(
            "return ctx.schedule.after(input.delay, 'report', {});",
            &["schedule"],
            &[],
        ),
        limits,
        host.clone(),
    )
    .await
    .expect("instance");
    let meta = || CallMeta::with_timeout(Duration::from_secs(5));
    // 1e300 ms overflows a Duration; it must be refused like any delay over a week.
    for delay in [json!(1e300), json!(f64::MAX)] {
        let error = instance
            .execute(json!({ "delay": delay }), meta())
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("longer than a week"),
            "{delay}: {error}"
        );
    }
    let output = instance
        .execute(json!({ "delay": 50 }), meta())
        .await
        .expect("the same instance still serves");
    assert_eq!(output, "s-1");
    let scheduled = host.scheduled();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].1.delay, Duration::from_millis(50));
}
