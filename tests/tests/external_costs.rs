//! External API costs of deployed functions on a real node: the tokens of a function's own
//! `ctx.model` calls (a scripted model server) and its `ctx.http` requests (a local HTTP server)
//! are counted where the calls run and appear in the function's ROI as measured lines.

use std::time::Duration;

use klf_actors::functions::http::Cidr;
use klf_actors::ledger::Basis;
use klf_actors::model::ModelConfig;
use klf_actors::node::RunOptions;
use klf_actors::router::InvokeRequest;
use klf_tests::model_server::{ModelServer, Scripted};
use klf_tests::{InProcessMesh, wait_until, write_package};
use serde_json::json;

const ANALYST: &str = r#"
import { BaseFunction } from "klf:base";
export default class Analyst extends BaseFunction {
  async execute(input, ctx) {
    const feed = await ctx.http.fetch(input.url);
    const answer = await ctx.model.complete({ prompt: `summarise ${feed.body}` });
    return { usage: answer.usage, status: feed.status };
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_tokens_and_http_requests_of_a_function_are_measured_external_costs() {
    let model = ModelServer::start(vec![Scripted::Echo])
        .await
        .expect("model server");
    let app = axum::Router::new().route("/v1/series", axum::routing::get(|| async { "1 2 3 4 5" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let options = RunOptions {
        model: Some(ModelConfig {
            base_url: model.base_url(),
            model: "fake-gpt".into(),
            api_key: None,
            max_attempts: 1,
            backoff: Duration::from_millis(10),
        }),
        http_allow: vec![Cidr::parse("127.0.0.1/32").expect("cidr")],
        ..RunOptions::loopback()
    };
    let mesh = InProcessMesh::start_with_options(1, options)
        .await
        .expect("mesh");
    let manifest = format!(
        "capabilities = [\"model\", \"http\"]\n[http]\nallow = [\"http://{addr}/v1/*\"]\n\
         [limits]\ntimeout_ms = 5000"
    );
    let package = write_package(mesh.dir.path(), "analyst", "1.0.0", &manifest, ANALYST);
    mesh.nodes[0]
        .publish(package, 1, "admin")
        .await
        .expect("deploy");
    let node = &mesh.nodes[0];
    let call = || {
        node.invoke(InvokeRequest::new(
            "analyst",
            json!({ "url": format!("http://{addr}/v1/series") }),
            Duration::from_secs(10),
        ))
    };
    assert!(
        wait_until(Duration::from_secs(5), || async { call().await.is_ok() }).await,
        "analyst never answered"
    );
    let (mut tokens_in, mut tokens_out) = (0, 0);
    // The call that answered first is counted too: add up from the statistics' own start.
    for _ in 0..3 {
        let output = call().await.expect("analyst").output;
        assert_eq!(output["status"], 200);
        tokens_in += output["usage"]["inputTokens"].as_u64().unwrap_or(0);
        tokens_out += output["usage"]["outputTokens"].as_u64().unwrap_or(0);
    }
    assert!(tokens_in > 0 && tokens_out > 0);

    let stats = node.mesh_function_stats().await;
    let analyst = stats
        .iter()
        .find(|s| s.function == "analyst")
        .expect("stats of analyst");
    let calls = analyst.calls;
    assert!(calls >= 4, "{analyst:?}");
    // Every successful call made one model call with the same prompt, so the same usage.
    assert_eq!(analyst.model_tokens_in, tokens_in / 3 * analyst.calls);
    assert_eq!(analyst.model_tokens_out, tokens_out / 3 * analyst.calls);
    assert_eq!(analyst.http_requests, analyst.calls);
    assert_eq!(
        analyst.http_by_host.get("127.0.0.1").copied(),
        Some(analyst.calls)
    );

    let roi = mesh.kitchens[0].roi(Some("analyst")).await.expect("roi");
    let tokens = roi
        .cost
        .line("function_model")
        .expect("function_model line");
    assert_eq!(tokens.amount.basis, Basis::Measured);
    let quantity = |name: &str| {
        tokens
            .quantities
            .iter()
            .find(|q| q.name == name)
            .map(|q| q.value)
    };
    assert_eq!(quantity("tokens_in"), Some(analyst.model_tokens_in as f64));
    assert_eq!(
        quantity("tokens_out"),
        Some(analyst.model_tokens_out as f64)
    );
    let rates = mesh.kitchens[0].rates();
    let expected = analyst.model_tokens_in as f64 / 1000.0 * rates.model_input_usd_per_1k.value
        + analyst.model_tokens_out as f64 / 1000.0 * rates.model_output_usd_per_1k.value;
    assert!((tokens.amount.value - expected).abs() < 1e-12, "{tokens:?}");
    let http = roi.cost.line("http").expect("http line");
    assert_eq!(http.amount.basis, Basis::Measured);
    assert_eq!(http.quantities.first().map(|q| q.value), Some(calls as f64));
    assert!(
        http.amount.note.contains(&format!(
            "{calls} ctx.http request(s) answered (127.0.0.1 {calls} × $0)"
        )),
        "{}",
        http.amount.note
    );
    mesh.shutdown().await;
}
