//! `ctx.http.fetch` and `ctx.sleep` against real HTTP servers on 127.0.0.1: what is allowed
//! answers; a URL outside the allow list, a loopback address without the operator's allowance, a
//! name that resolves to one and a redirect to a metadata address are refused; body, time, rate
//! limits hold; a secret injected into a header reaches the server and nothing else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::test_host::FakeHost;
use super::*;
use crate::http::{AddressPolicy, Cidr, HttpClient, HttpGrant};

/// What the test server saw.
#[derive(Default)]
struct Seen {
    headers: Mutex<Vec<HeaderMap>>,
    flaky: AtomicUsize,
    failing: AtomicUsize,
}

/// A local HTTP server with one route per behaviour under test.
struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Server {
    async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(
                "/v1/json",
                get(
                    |State(seen): State<Arc<Seen>>, headers: HeaderMap| async move {
                        seen.headers.lock().unwrap().push(headers);
                        axum::Json(json!({ "price": 42.5 }))
                    },
                ),
            )
            .route(
                "/v1/echo",
                post(|body: String| async move { (StatusCode::CREATED, body) }),
            )
            .route("/v1/big", get(|| async { "x".repeat(64 * 1024) }))
            .route(
                "/v1/slow",
                get(|| async {
                    std::future::pending::<()>().await;
                    "never"
                }),
            )
            .route(
                "/v1/to-metadata",
                get(|| async {
                    (
                        StatusCode::FOUND,
                        [("location", "http://169.254.169.254/latest/meta-data/")],
                    )
                }),
            )
            .route(
                "/v1/to-elsewhere",
                get(|| async { (StatusCode::FOUND, [("location", "/other/place")]) }),
            )
            .route(
                "/v1/to-json",
                get(|| async { (StatusCode::FOUND, [("location", "/v1/json")]) }),
            )
            .route(
                "/v1/flaky",
                get(|State(seen): State<Arc<Seen>>| async move {
                    if seen.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        )
                            .into_response()
                    } else {
                        axum::Json(json!({ "ok": true })).into_response()
                    }
                }),
            )
            .route(
                "/v1/failing",
                get(|State(seen): State<Arc<Seen>>| async move {
                    seen.failing.fetch_add(1, Ordering::SeqCst);
                    Response::builder()
                        .status(500)
                        .body(axum::body::Body::from("boom"))
                        .unwrap()
                }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A client that may reach 127.0.0.1 (what `klf up --http-allow 127.0.0.1/32` configures).
fn open_client() -> Arc<HttpClient> {
    Arc::new(
        HttpClient::new(AddressPolicy::new(vec![
            Cidr::parse("127.0.0.1/32").unwrap(),
        ]))
        .unwrap(),
    )
}

/// A client with the default policy: no loopback, private or metadata address.
fn closed_client() -> Arc<HttpClient> {
    Arc::new(HttpClient::new(AddressPolicy::default()).unwrap())
}

fn code(body: &str, grant: HttpGrant, secrets: &[&str]) -> FunctionCode {
    let mut capabilities = vec!["http".to_string(), "log".to_string()];
    if !secrets.is_empty() {
        capabilities.push("secret".into());
    }
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
        dependencies: Vec::new(),
        capabilities,
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        http: grant,
    }
}

async fn run(
    host: Arc<FakeHost>,
    code: FunctionCode,
    input: Value,
    timeout: Duration,
) -> Result<Value, SandboxError> {
    let limits = SandboxLimits {
        memory_bytes: 16 << 20,
        timeout,
        max_output_bytes: 256 * 1024,
    };
    let instance = Instance::start(code, limits, host).await?;
    instance
        .execute(input, CallMeta::with_timeout(timeout))
        .await
}

fn grant(server: &Server) -> HttpGrant {
    HttpGrant::allowing(&[&format!("http://{}/v1/*", server.addr)]).unwrap()
}

const FETCH: &str = "return await ctx.http.fetch(input.url, input.options ?? {});";

#[tokio::test]
async fn an_allowed_url_answers_with_status_headers_and_json() {
    let server = Server::start().await;
    let host = FakeHost::builder().http(open_client()).build();
    let output = run(
        host.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/json") }),
        Duration::from_secs(5),
    )
    .await
    .expect("allowed");
    assert_eq!(output["status"], 200);
    assert_eq!(output["ok"], true);
    assert_eq!(output["json"], json!({ "price": 42.5 }));
    assert_eq!(output["headers"]["content-type"], "application/json");

    let output = run(
        host.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/echo"),
                "options": { "method": "post", "json": { "a": [1, 2] } } }),
        Duration::from_secs(5),
    )
    .await
    .expect("post");
    assert_eq!(output["status"], 201);
    assert_eq!(output["body"], "{\"a\":[1,2]}");

    // A redirect inside the allow list is followed.
    let output = run(
        host,
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/to-json") }),
        Duration::from_secs(5),
    )
    .await
    .expect("redirected");
    assert_eq!(output["json"]["price"], 42.5);
    assert!(output["url"].as_str().unwrap().ends_with("/v1/json"));
}

#[tokio::test]
async fn what_is_not_allowed_is_refused_naming_the_rule() {
    let server = Server::start().await;
    let open = FakeHost::builder().http(open_client()).build();
    let closed = FakeHost::builder().http(closed_client()).build();
    let denied = |error: &SandboxError, needle: &str| {
        assert!(
            matches!(error, SandboxError::CapabilityDenied { capability, detail }
                if capability == "http" && detail.contains(needle)),
            "expected a refusal mentioning {needle:?}, got {error}"
        );
    };

    // Outside the allow list (another path, then another port).
    let error = run(
        open.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/admin?token=abc") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    denied(&error, "outside the [http] allow list");
    denied(&error, &format!("allowed: http://{}/v1/*", server.addr));
    assert!(!error.to_string().contains("abc"), "{error}");

    // The same allowed URL on a node whose operator did not open loopback.
    let error = run(
        closed.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/json") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    denied(&error, "127.0.0.1 is a loopback address");
    denied(&error, "--http-allow 127.0.0.1/32");

    // A name that resolves to a loopback address: refused when it resolves.
    let by_name =
        HttpGrant::allowing(&[&format!("http://localhost:{}/v1/*", server.addr.port())]).unwrap();
    let error = run(
        closed.clone(),
        code(FETCH, by_name, &[]),
        json!({ "url": format!("http://localhost:{}/v1/json", server.addr.port()) }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    denied(&error, "localhost resolves only to refused addresses");
    denied(&error, "loopback");

    // A redirect to the cloud metadata address, even with the address in the allow list.
    let with_metadata = HttpGrant::allowing(&[
        &format!("http://{}/v1/*", server.addr),
        "http://169.254.169.254/*",
    ])
    .unwrap();
    let error = run(
        open.clone(),
        code(FETCH, with_metadata, &[]),
        json!({ "url": server.url("/v1/to-metadata") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    denied(&error, "169.254.169.254 is a cloud metadata address");

    // A redirect out of the allow list.
    let error = run(
        open.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/to-elsewhere") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    denied(&error, "/other/place is outside the [http] allow list");

    // Without the capability.
    let mut without = code(FETCH, grant(&server), &[]);
    without.capabilities = vec!["log".into()];
    let error = run(
        open.clone(),
        without,
        json!({ "url": server.url("/v1/json") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    denied(&error, "needs the \"http\" capability");

    // The refusals are catchable, and the instance keeps serving.
    let output = run(
        open,
        code(
            "try { await ctx.http.fetch('http://example.invalid/'); } catch (e) { return e.name; }",
            grant(&server),
            &[],
        ),
        json!({}),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(output, Ok(json!("CapabilityDenied")));
}

#[tokio::test]
async fn body_time_and_rate_limits_hold() {
    let server = Server::start().await;
    let host = FakeHost::builder().http(open_client()).build();
    let small = HttpGrant {
        max_response_bytes: 1024,
        ..grant(&server)
    };
    let error = run(
        host.clone(),
        code(FETCH, small.clone(), &[]),
        json!({ "url": server.url("/v1/big") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, SandboxError::Http(m) if m.contains("over the limit of 1024 bytes")),
        "{error}"
    );
    let error = run(
        host.clone(),
        code(FETCH, small, &[]),
        json!({ "url": server.url("/v1/echo"),
                "options": { "method": "POST", "body": "y".repeat(512) } }),
        Duration::from_secs(5),
    )
    .await;
    assert!(error.is_ok(), "the request limit is separate: {error:?}");
    let tiny_request = HttpGrant {
        max_request_bytes: 16,
        ..grant(&server)
    };
    let error = run(
        host.clone(),
        code(FETCH, tiny_request, &[]),
        json!({ "url": server.url("/v1/echo"),
                "options": { "method": "POST", "body": "y".repeat(17) } }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("max_request_bytes"), "{error}");

    // A server that never answers: `timeoutMs`, then the call's own deadline.
    let started = Instant::now();
    let error = run(
        host.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/slow"), "options": { "timeoutMs": 200 } }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, SandboxError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let error = run(
        host.clone(),
        code(FETCH, grant(&server), &[]),
        json!({ "url": server.url("/v1/slow") }),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, SandboxError::Timeout { .. }), "{error}");

    // Two requests per second: the third in a row is refused.
    let slow_rate = HttpGrant {
        per_second: 2,
        ..grant(&server)
    };
    let output = run(
        host,
        code(
            "const out = [];
             for (let i = 0; i < 3; i++) {
               try { out.push((await ctx.http.fetch(input.url)).status); }
               catch (e) { out.push(e.name + ': ' + e.message); }
             }
             return out;",
            slow_rate,
            &[],
        ),
        json!({ "url": server.url("/v1/json") }),
        Duration::from_secs(5),
    )
    .await
    .expect("runs");
    assert_eq!(output[0], 200);
    assert_eq!(output[1], 200);
    assert!(
        output[2].as_str().unwrap().contains("per_second"),
        "{output}"
    );
}

/// Captures everything `tracing` emits on this thread, spans with their fields included.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_secret_header_reaches_the_server_and_nothing_else() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    const SECRET: &str = "sk-live-7f3a9c";
    let server = Server::start().await;
    let host = FakeHost::builder()
        .secret("api-key", SECRET)
        .http(open_client())
        .build();
    let body = "const r = await ctx.http.fetch(input.url + '?key=' + input.q, {
                  headers: { authorization: { secret: 'api-key', prefix: 'Bearer ' } } });
                ctx.log.info('answered', r.status, r.url);
                if (input.fail) await ctx.http.fetch(input.bad, {
                  headers: { authorization: { secret: 'api-key' } } });
                return r.json;";
    let output = run(
        host.clone(),
        code(body, grant(&server), &["api-key"]),
        json!({ "url": server.url("/v1/json"), "q": "query-secret" }),
        Duration::from_secs(5),
    )
    .await
    .expect("answers");
    assert_eq!(output["price"], 42.5);
    let seen = server.seen.headers.lock().unwrap().clone();
    assert_eq!(
        seen[0].get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let error = run(
        host.clone(),
        code(body, grant(&server), &["api-key"]),
        json!({ "url": server.url("/v1/json"), "q": "x", "fail": true,
                "bad": "http://127.0.0.1:1/v1/x" }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    // An undeclared secret is refused by name, its value never read.
    let undeclared = run(
        host.clone(),
        code(
            "return await ctx.http.fetch(input.url, { headers: { a: { secret: 'other' } } });",
            grant(&server),
            &["api-key"],
        ),
        json!({ "url": server.url("/v1/json") }),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        undeclared.to_string().contains("not declared"),
        "{undeclared}"
    );

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // Whether the span itself was captured depends on other tests' threads (the callsite cache
    // is global); tests/tests/http.rs checks the spans of a real node with a global subscriber.
    for text in [logs.as_str(), &error.to_string(), &format!("{error:?}")] {
        assert!(!text.contains(SECRET), "the secret leaked: {text}");
        assert!(!text.contains("query-secret"), "the query leaked: {text}");
    }
    let host_logs = format!("{:?}", host.logs());
    assert!(host_logs.contains("answered 200"), "{host_logs}");
    assert!(!host_logs.contains(SECRET) && !host_logs.contains("query-secret"));
}

#[tokio::test]
async fn sleep_waits_within_the_deadline() {
    let host = FakeHost::echo();
    let started = Instant::now();
    let output = run(
        host.clone(),
        code(
            "const t0 = ctx.now(); await ctx.sleep(60);
             const v = await ctx.setTimeout(() => 7, 10);
             return { waited: ctx.now() - t0, v };",
            HttpGrant::default(),
            &[],
        ),
        json!({}),
        Duration::from_secs(5),
    )
    .await
    .expect("sleeps");
    assert!(output["waited"].as_f64().unwrap() >= 69.0, "{output}");
    assert_eq!(output["v"], 7);
    assert!(started.elapsed() >= Duration::from_millis(70));
    // Past the deadline: Timeout at once, not after the wait.
    let started = Instant::now();
    let error = run(
        host.clone(),
        code(
            "await ctx.sleep(60000); return 1;",
            HttpGrant::default(),
            &[],
        ),
        json!({}),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, SandboxError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let error = run(
        host,
        code("await ctx.sleep(-1); return 1;", HttpGrant::default(), &[]),
        json!({}),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("non-negative"), "{error}");
}

/// A `BaseConnector` to the test server, configured with `settings`.
fn connector(server: &Server, settings: Value) -> FunctionCode {
    let mut code = code("", grant(server), &[]);
    code.source = "import { BaseConnector } from \"klf:base\";\n\
                   export default class Feed extends BaseConnector {\n\
                     async execute(input, ctx) {\n\
                       if (input.breaker) return this.breakerState(ctx);\n\
                       try { return await this.request(input.path, {}, ctx); }\n\
                       catch (e) { return { error: e.name, status: e.status ?? null,\n\
                                            attempts: e.attempts ?? null, message: e.message }; }\n\
                     }\n\
                   }\n"
    .into();
    let mut config = json!({ "http": { "baseUrl": format!("http://{}", server.addr) } });
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), settings) {
        config.extend(extra);
    }
    code.config = config;
    code
}

#[tokio::test]
async fn the_http_connector_waits_for_retry_after_and_succeeds() {
    let server = Server::start().await;
    let host = FakeHost::builder().http(open_client()).build();
    let instance = Instance::start(
        connector(&server, json!({ "retries": 2 })),
        SandboxLimits {
            timeout: Duration::from_secs(5),
            ..SandboxLimits::default()
        },
        host,
    )
    .await
    .expect("starts");
    let started = Instant::now();
    let output = instance
        .execute(
            json!({ "path": "/v1/flaky" }),
            CallMeta::with_timeout(Duration::from_secs(5)),
        )
        .await
        .expect("answers");
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(output["attempts"], 2);
    assert_eq!(output["json"], json!({ "ok": true }));
    assert_eq!(server.seen.flaky.load(Ordering::SeqCst), 2);
    // It waited the second the server asked for, not a 50 ms backoff.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_http_connector_opens_its_breaker_after_repeated_failures() {
    let server = Server::start().await;
    let host = FakeHost::builder().http(open_client()).build();
    let instance = Instance::start(
        connector(
            &server,
            json!({ "retries": 2, "backoffMs": 10,
                    "breaker": { "failures": 3, "resetMs": 60000 } }),
        ),
        SandboxLimits::default(),
        host,
    )
    .await
    .expect("starts");
    let meta = || CallMeta::with_timeout(Duration::from_secs(5));
    let output = instance
        .execute(json!({ "path": "/v1/failing" }), meta())
        .await
        .expect("runs");
    assert_eq!(output["error"], "UpstreamError", "{output}");
    assert_eq!(output["status"], 500);
    assert_eq!(output["attempts"], 3);
    assert_eq!(server.seen.failing.load(Ordering::SeqCst), 3);
    // Open: the next request fails at once without reaching the server.
    let output = instance
        .execute(json!({ "path": "/v1/failing" }), meta())
        .await
        .expect("runs");
    assert_eq!(output["error"], "CircuitOpen", "{output}");
    assert_eq!(output["status"], 503);
    assert_eq!(server.seen.failing.load(Ordering::SeqCst), 3);
    let state = instance
        .execute(json!({ "breaker": true }), meta())
        .await
        .expect("runs");
    assert_eq!(state["state"], "open", "{state}");
    // A refusal is not retried and does not count as the service failing.
    let output = instance
        .execute(json!({ "path": "http://example.invalid/x" }), meta())
        .await
        .expect("runs");
    assert_eq!(output["error"], "CircuitOpen", "{output}");
}
