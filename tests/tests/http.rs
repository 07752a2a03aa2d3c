//! `ctx.http.fetch` on real nodes against a real local HTTP server: the operator's allowance
//! (`klf up --http-allow`, here `RunOptions::http_allow`) opens 127.0.0.1, and the same URL is
//! refused without it; names resolving to loopback and redirects to the metadata address are
//! refused; a secret injected into a header reaches the server and no log, span or error; the
//! node keeps serving after every refusal.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use klf_actors::functions::http::Cidr;
use klf_actors::node::{Node, RunOptions};
use klf_actors::router::{InvokeErrorKind, InvokeRequest};
use klf_tests::{InProcessMesh, wait_until, write_package};
use serde_json::{Value, json};

const SECRET: &str = "sk-live-0d9e1f77";

const FEED: &str = r#"
import { BaseFunction } from "klf:base";
export default class Feed extends BaseFunction {
  async execute(input, ctx) {
    if (input.ping) return "pong";
    const r = await ctx.http.fetch(input.url, {
      headers: { authorization: { secret: "api-key", prefix: "Bearer " } },
      timeoutMs: 2000,
    });
    ctx.log.info("feed answered", r.status, r.url);
    return { status: r.status, json: r.json ?? null };
  }
}
"#;

/// Everything the process logs (spans with their fields included), for the leak check.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,klf::trace=info,klf::http=debug,klf::function=debug,quinn=warn,rustls=warn",
            ))
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A local price feed: `/v1/prices` (JSON, recording request headers) and `/v1/to-metadata`
/// (a redirect to the cloud metadata address).
async fn feed_server() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let app = Router::new()
        .route(
            "/v1/prices",
            get(
                |State(seen): State<Arc<Mutex<Vec<HeaderMap>>>>, headers: HeaderMap| async move {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(headers);
                    axum::Json(json!({ "BTC": [1, 2, 3] }))
                },
            ),
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
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn manifest(addr: SocketAddr) -> String {
    format!(
        "capabilities = [\"http\", \"secret\", \"log\"]\nsecrets = [\"api-key\"]\n\
         [http]\nallow = [\"http://{addr}/v1/*\", \"http://localhost:{}/v1/*\", \
         \"http://169.254.169.254/*\"]\n[limits]\ntimeout_ms = 5000",
        addr.port()
    )
}

async fn call(node: &Node, input: Value) -> Result<Value, klf_actors::router::InvokeError> {
    node.invoke(InvokeRequest::new("feed", input, Duration::from_secs(10)))
        .await
        .map(|outcome| outcome.output)
}

async fn deploy(mesh: &InProcessMesh, addr: SocketAddr) {
    for i in 0..mesh.nodes.len() {
        let secrets = mesh.data_dir(i).secrets_dir();
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        std::fs::write(secrets.join("api-key"), format!("{SECRET}\n")).expect("secret");
    }
    let package = write_package(mesh.dir.path(), "feed", "1.0.0", &manifest(addr), FEED);
    mesh.nodes[0]
        .publish(package, 1, "admin")
        .await
        .expect("deploy");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes
                .iter()
                .all(|n| n.catalog().deployment("feed").is_some())
        })
        .await
    );
}

fn assert_denied(error: &klf_actors::router::InvokeError, needle: &str) {
    assert_eq!(
        error.kind,
        InvokeErrorKind::CapabilityDenied,
        "{}",
        error.message
    );
    assert!(
        error.message.contains(needle),
        "expected {needle:?} in {}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_operators_allowance_a_function_fetches_and_the_secret_stays_hidden() {
    let logs = captured();
    let (addr, seen) = feed_server().await;
    let options = RunOptions {
        http_allow: vec![Cidr::parse("127.0.0.1/32").expect("cidr")],
        ..RunOptions::loopback()
    };
    let mesh = InProcessMesh::start_with_options(2, options)
        .await
        .expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    deploy(&mesh, addr).await;

    // From both nodes: at least one call crosses the mesh to the single replica.
    for node in &mesh.nodes {
        let output = call(
            node,
            json!({ "url": format!("http://{addr}/v1/prices?apikey=query-secret") }),
        )
        .await
        .expect("allowed URL answers");
        assert_eq!(
            output,
            json!({ "status": 200, "json": { "BTC": [1, 2, 3] } })
        );
    }
    let headers = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(headers.len(), 2);
    assert_eq!(
        headers[0]
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {SECRET}").as_str())
    );

    let error = call(
        &mesh.nodes[1],
        json!({ "url": format!("http://{addr}/admin?apikey=query-secret") }),
    )
    .await
    .unwrap_err();
    assert_denied(&error, "outside the [http] allow list");
    assert_denied(&error, &format!("http://{addr}/v1/*"));
    let redirected = call(
        &mesh.nodes[1],
        json!({ "url": format!("http://{addr}/v1/to-metadata") }),
    )
    .await
    .unwrap_err();
    assert_denied(&redirected, "169.254.169.254 is a cloud metadata address");
    for message in [&error.message, &redirected.message] {
        assert!(!message.contains(SECRET) && !message.contains("query-secret"));
    }

    // Every request was a span with the method, the redacted URL and the status.
    let text =
        || String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            text().contains("http.response.status_code=200")
        })
        .await,
        "no http.request span was recorded"
    );
    let all = text();
    assert!(all.contains("http.request"), "{all}");
    assert!(all.contains("apikey=REDACTED"), "{all}");
    assert!(all.contains("feed answered 200"), "{all}");
    assert!(!all.contains(SECRET), "the secret reached a log or span");
    assert!(
        !all.contains("query-secret"),
        "a query value reached a log or span"
    );

    assert_eq!(
        call(&mesh.nodes[0], json!({ "ping": true })).await.ok(),
        Some(json!("pong"))
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_allowance_loopback_is_refused_and_the_node_keeps_serving() {
    captured();
    let (addr, seen) = feed_server().await;
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    deploy(&mesh, addr).await;

    // The same URL the other test fetches, on a node whose operator opened nothing.
    let error = call(
        &mesh.nodes[0],
        json!({ "url": format!("http://{addr}/v1/prices") }),
    )
    .await
    .unwrap_err();
    assert_denied(&error, "127.0.0.1 is a loopback address");
    assert_denied(&error, "--http-allow 127.0.0.1/32");
    // A name that resolves to loopback.
    let error = call(
        &mesh.nodes[0],
        json!({ "url": format!("http://localhost:{}/v1/prices", addr.port()) }),
    )
    .await
    .unwrap_err();
    assert_denied(&error, "localhost resolves only to refused addresses");
    assert!(seen.lock().unwrap_or_else(|e| e.into_inner()).is_empty());

    assert_eq!(
        call(&mesh.nodes[0], json!({ "ping": true })).await.ok(),
        Some(json!("pong"))
    );
    mesh.shutdown().await;
}
