//! A chain of calls across two nodes is one OpenTelemetry trace: node1 invokes `chain`, which
//! runs on node0 and calls `leaf`, which runs on node1. Real nodes, real QUIC; the spans go through
//! the real `tracing-opentelemetry` layer and SDK into an exporter that keeps them for the asserts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use klf_actors::router::InvokeRequest;
use klf_tests::{InProcessMesh, wait_until, write_package};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::json;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// Keeps every exported span.
#[derive(Clone, Debug, Default)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Kept {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend(batch);
        }
        Ok(())
    }
}

impl Kept {
    fn spans(&self) -> Vec<SpanData> {
        self.0.lock().map(|k| k.clone()).unwrap_or_default()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_calls_across_nodes_is_one_trace() {
    let kept = Kept::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(kept.clone())
        .build();
    // Global: the nodes' tasks run on every worker thread (this binary holds this test alone).
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("klf-test"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target(klf_actors::router::trace::TARGET, tracing::Level::INFO),
                ),
        ),
    )
    .expect("the only subscriber of this test binary");

    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    let ids: Vec<String> = mesh
        .nodes
        .iter()
        .map(|n| n.identity().node_id.clone())
        .collect();
    let on = |name: &String, node: usize| {
        klf_actors::placement::hosts(name, ids.iter().map(String::as_str), 1)
            == [ids[node].as_str()]
    };
    let chain = (0..200)
        .map(|i| format!("chain-{i}"))
        .find(|n| on(n, 0))
        .expect("a name placed on node0");
    let leaf = (0..200)
        .map(|i| format!("leaf-{i}"))
        .find(|n| on(n, 1))
        .expect("a name placed on node1");
    let work = tempfile::tempdir().expect("tmp");
    let leaf_js = "import { BaseFunction } from \"klf:base\";\nexport default class L extends BaseFunction { async execute(input) { return { n: input.n * 2 }; } }\n";
    let chain_js = format!(
        "import {{ BaseFunction }} from \"klf:base\";\nexport default class C extends BaseFunction {{ async execute(input) {{ const r = await this.ctx.call(\"{leaf}\", {{ n: input.n }}); return {{ n: r.n + 1 }}; }} }}\n"
    );
    let extra = format!("capabilities = [\"call\"]\n[dependencies]\n\"{leaf}\" = \"^1\"");
    mesh.nodes[0]
        .publish(
            write_package(work.path(), &leaf, "1.0.0", "", leaf_js),
            1,
            "admin",
        )
        .await
        .expect("leaf");
    mesh.nodes[0]
        .publish(
            write_package(work.path(), &chain, "1.0.0", &extra, &chain_js),
            1,
            "admin",
        )
        .await
        .expect("chain");
    let invoke = || {
        mesh.nodes[1].invoke(InvokeRequest::new(
            &chain,
            json!({"n": 20}),
            Duration::from_secs(5),
        ))
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            invoke().await.is_ok_and(|o| o.output == json!({"n": 41}))
        })
        .await,
        "{chain} should answer from node1"
    );

    // One more call, in a trace of its own. Its first span ends before `invoke` returns; a
    // serve span of an earlier call may still end late, so spans are picked by this trace's id.
    let before = kept.spans().len();
    let outcome = invoke().await.expect("invoke");
    assert_eq!(outcome.output, json!({"n": 41}));
    let invoke_chain = kept.spans()[before..]
        .iter()
        .find(|s| s.name == "klf.invoke" && attribute(s, "function").as_deref() == Some(&chain))
        .cloned()
        .expect("the call's own span");
    let trace: TraceId = invoke_chain.span_context.trace_id();
    let in_trace = || -> Vec<SpanData> {
        kept.spans()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || async { in_trace().len() >= 4 }).await,
        "four spans expected in the trace, got {:?}",
        in_trace()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    );
    let spans = in_trace();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let find = |name: &str, function: &str| -> SpanData {
        spans
            .iter()
            .find(|s| s.name == name && attribute(s, "function").as_deref() == Some(function))
            .unwrap_or_else(|| panic!("no {name} span of {function} in {spans:#?}"))
            .clone()
    };
    let serve_chain = find("klf.serve", &chain);
    let invoke_leaf = find("klf.invoke", &leaf);
    let serve_leaf = find("klf.serve", &leaf);
    // node1 → node0 → node1, each hop a child of the one before, the network hops remote.
    assert_eq!(
        invoke_chain.parent_span_id,
        SpanId::INVALID,
        "the first call is the root"
    );
    assert_eq!(
        serve_chain.parent_span_id,
        invoke_chain.span_context.span_id()
    );
    assert!(serve_chain.parent_span_is_remote);
    assert_eq!(
        invoke_leaf.parent_span_id,
        serve_chain.span_context.span_id()
    );
    assert_eq!(
        serve_leaf.parent_span_id,
        invoke_leaf.span_context.span_id()
    );
    assert!(serve_leaf.parent_span_is_remote);
    assert_eq!(
        attribute(&invoke_chain, "node").as_deref(),
        Some(ids[0].as_str())
    );

    // A failed call marks its span as an error with the kind.
    let missing = mesh.nodes[1]
        .invoke(InvokeRequest::new(
            "no-such-function",
            json!({}),
            Duration::from_secs(1),
        ))
        .await;
    assert!(missing.is_err());
    assert!(
        wait_until(Duration::from_secs(5), || async {
            kept.spans().iter().any(|s| {
                attribute(s, "function").as_deref() == Some("no-such-function")
                    && attribute(s, "error.kind").as_deref() == Some("unknown_function")
            })
        })
        .await
    );
    mesh.shutdown().await;
    let _ = provider.shutdown();
}
