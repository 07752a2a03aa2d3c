//! What `ctx.http.fetch` costs against a plain reqwest request to the same local server, in the
//! same run. Run with `cargo bench -p klf-tests --bench http`.
//!
//! One axum server on 127.0.0.1 answers `GET /v1/quote` with a 40-byte JSON body. Measured, each
//! sequentially (p50, p99 over `MEASURED` requests after `WARMUP`) and with 16 requests in flight
//! (requests/s):
//! - `reqwest`: a plain `reqwest::Client` (rustls build, connection pool) — the floor;
//! - `klf client`: the node's [`HttpClient`] with the function's grant (allow-rule check, the
//!   guarded resolver, the body limit, the span) — what `ctx.http` adds in Rust;
//! - `function + fetch`: a deployed JavaScript function on a real node (`--http-allow
//!   127.0.0.1/32`) that does one `ctx.http.fetch` and returns the parsed JSON, invoked locally;
//! - `function, no fetch`: the same function returning a constant: the invocation's own floor, so
//!   that `function + fetch` minus it is what the fetch costs inside a function.
//!
//! The server, the client and the node share one 2-worker runtime (this machine has 2 cores).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use klf_actors::functions::http::{AddressPolicy, Cidr, HttpClient, HttpGrant, HttpRequest};
use klf_actors::node::RunOptions;
use klf_actors::router::InvokeRequest;
use klf_tests::{InProcessMesh, write_package};
use serde_json::json;

const WARMUP: usize = 300;
const MEASURED: usize = 3_000;
const IN_FLIGHT: usize = 16;
const THROUGHPUT_REQUESTS: usize = 4_000;

const FETCHER: &str = r#"
import { BaseFunction } from "klf:base";
export default class Fetcher extends BaseFunction {
  async execute(input, ctx) {
    if (input.skip) return { price: 0 };
    return (await ctx.http.fetch(input.url)).json;
  }
}
"#;

type Call =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Sequential latency (µs histogram), then requests/s with `IN_FLIGHT` in flight.
async fn measure(call: &Call) -> anyhow::Result<(Histogram<u64>, f64)> {
    for _ in 0..WARMUP {
        call().await?;
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..MEASURED {
        let started = Instant::now();
        call().await?;
        histogram.record(started.elapsed().as_micros() as u64)?;
    }
    let started = Instant::now();
    let per_task = THROUGHPUT_REQUESTS / IN_FLIGHT;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                call().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = (per_task * IN_FLIGHT) as f64 / started.elapsed().as_secs_f64();
    Ok((histogram, rate))
}

async fn run() -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/v1/quote",
        axum::routing::get(|| async { axum::Json(json!({ "symbol": "BTC", "price": 42.5 })) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://{addr}/v1/quote");

    let plain = reqwest::Client::builder().no_proxy().build()?;
    let plain_call: Call = {
        let url = url.clone();
        Arc::new(move || {
            let (plain, url) = (plain.clone(), url.clone());
            Box::pin(async move {
                let response = plain.get(&url).send().await?;
                let _: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
                Ok(())
            })
        })
    };

    let allow = vec![Cidr::parse("127.0.0.1/32").map_err(anyhow::Error::msg)?];
    let client = Arc::new(HttpClient::new(AddressPolicy::new(allow.clone()))?);
    let grant = Arc::new(
        HttpGrant::allowing(&[&format!("http://{addr}/v1/*")]).map_err(anyhow::Error::msg)?,
    );
    let parsed = reqwest::Url::parse(&url)?;
    let client_call: Call = Arc::new(move || {
        let (client, grant, url) = (client.clone(), grant.clone(), parsed.clone());
        Box::pin(async move {
            let span = tracing::Span::none();
            let response = client
                .fetch(
                    "bench",
                    HttpRequest {
                        method: reqwest::Method::GET,
                        url,
                        headers: Vec::new(),
                        body: None,
                        grant,
                    },
                    &span,
                )
                .await?;
            let _: serde_json::Value = serde_json::from_slice(&response.body)?;
            Ok(())
        })
    });

    let options = RunOptions {
        http_allow: allow,
        ..RunOptions::loopback()
    };
    let mesh = Arc::new(InProcessMesh::start_with_options(1, options).await?);
    let manifest = format!(
        "capabilities = [\"http\"]\n[http]\nallow = [\"http://{addr}/v1/*\"]\nper_second = 100000\n\
         [limits]\nconcurrency = 256"
    );
    let package = write_package(mesh.dir.path(), "fetcher", "1.0.0", &manifest, FETCHER);
    mesh.nodes[0].publish(package, 1, "admin").await?;
    let invoke = |skip: bool| -> Call {
        let (mesh, url) = (mesh.clone(), url.clone());
        Arc::new(move || {
            let (mesh, url) = (mesh.clone(), url.clone());
            Box::pin(async move {
                mesh.nodes[0]
                    .invoke(InvokeRequest::new(
                        "fetcher",
                        json!({ "url": url, "skip": skip }),
                        Duration::from_secs(5),
                    ))
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                Ok(())
            })
        })
    };
    // The deploy is asynchronous: wait until the function answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while invoke(false)().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "fetcher never answered");
        tokio::task::yield_now().await;
    }

    println!(
        "{:<22} {:>9} {:>9} {:>12}",
        "path", "p50 µs", "p99 µs", "req/s (16)"
    );
    let mut p50 = Vec::new();
    for (label, call) in [
        ("reqwest", plain_call),
        ("klf client", client_call),
        ("function + fetch", invoke(false)),
        ("function, no fetch", invoke(true)),
    ] {
        let (histogram, rate) = measure(&call).await.context(label)?;
        println!(
            "{label:<22} {:>9.1} {:>9.1} {:>12.0}",
            ms(&histogram, 0.5) * 1000.0,
            ms(&histogram, 0.99) * 1000.0,
            rate
        );
        p50.push(ms(&histogram, 0.5) * 1000.0);
    }
    if let [plain, client, function, floor] = p50[..] {
        println!("klf client / reqwest at p50: {:.2}x", client / plain);
        println!(
            "fetch inside a function (function + fetch - function, no fetch) / reqwest at p50: {:.2}x",
            (function - floor) / plain
        );
        println!(
            "function + fetch / reqwest at p50: {:.2}x",
            function / plain
        );
    }
    if let Ok(mesh) = Arc::try_unwrap(mesh) {
        mesh.shutdown().await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}
