//! Invoking functions across real in-process nodes: routing to hosts, composition with ctx.call,
//! failover after a host dies, and every bad input giving a typed error while the node keeps serving.

use std::time::{Duration, Instant};

use klf_actors::model::ModelConfig;
use klf_actors::node::{Node, RunOptions};
use klf_actors::router::{InvokeErrorKind, InvokeRequest};
use klf_tests::model_server::{ModelServer, Scripted};
use klf_tests::{InProcessMesh, example_package, wait_until, write_package};
use serde_json::json;

async fn call(
    node: &Node,
    function: &str,
    input: serde_json::Value,
) -> Result<klf_actors::router::InvokeOutcome, klf_actors::router::InvokeError> {
    node.invoke(InvokeRequest::new(function, input, Duration::from_secs(5)))
        .await
}

/// Waits until every node's catalog holds the deployment of `name`.
async fn replicated(mesh: &InProcessMesh, name: &str) {
    assert!(
        wait_until(Duration::from_secs(3), || async {
            mesh.nodes
                .iter()
                .all(|n| n.catalog().deployment(name).is_some())
        })
        .await,
        "{name} should reach every node within 3 s"
    );
}

fn hosts_of(mesh: &InProcessMesh, name: &str, replicas: usize) -> Vec<String> {
    let ids: Vec<String> = mesh
        .nodes
        .iter()
        .map(|n| n.identity().node_id.clone())
        .collect();
    klf_actors::placement::hosts(name, ids.iter().map(String::as_str), replicas)
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_deployed_on_one_node_is_invoked_from_a_node_without_an_instance() {
    let mesh = InProcessMesh::start(3).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(5))
            .await
    );
    mesh.nodes[0]
        .publish(example_package("hello"), 2, "admin")
        .await
        .expect("deploy");
    replicated(&mesh, "hello").await;
    let hosts = hosts_of(&mesh, "hello", 2);
    let outsider = mesh
        .nodes
        .iter()
        .find(|n| !hosts.contains(&n.identity().node_id))
        .expect("one of three nodes hosts no replica");
    let outcome = call(outsider, "hello", json!({"name": "KLF"}))
        .await
        .expect("invoke");
    assert_eq!(outcome.output, json!({"message": "Hello, KLF!"}));
    assert_eq!(outcome.served_by, "hello@1.0.0");
    assert!(hosts.contains(&outcome.node), "served by a placed host");
    assert_ne!(outcome.node, outsider.identity().node_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_call_composes_functions_hosted_on_different_nodes() {
    let mesh = InProcessMesh::start(3).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(5))
            .await
    );
    // Names whose single replicas land on two different nodes.
    let (caller, callee) = (0..200)
        .flat_map(|i| (0..200).map(move |j| (format!("avg-{i}"), format!("clean-{j}"))))
        .find(|(a, b)| hosts_of(&mesh, a, 1) != hosts_of(&mesh, b, 1))
        .expect("two names placed apart");
    let work = tempfile::tempdir().expect("tmp");
    let callee_js = "import { BaseFunction } from \"klf:base\";\nexport default class C extends BaseFunction { async execute(input) { return { xs: input.xs.filter((x) => typeof x === \"number\") }; } }\n";
    let caller_js = format!(
        "import {{ BaseFunction }} from \"klf:base\";\nexport default class A extends BaseFunction {{ async execute(input) {{ const c = await this.ctx.call(\"{callee}\", {{ xs: input.xs }}); const last = c.xs.slice(-3); return {{ avg: last.reduce((a, b) => a + b, 0) / last.length, n: last.length }}; }} }}\n"
    );
    mesh.nodes[0]
        .publish(
            write_package(work.path(), &callee, "1.0.0", "", callee_js),
            1,
            "admin",
        )
        .await
        .expect("callee");
    let extra = format!("capabilities = [\"call\"]\n[dependencies]\n\"{callee}\" = \"^1\"");
    mesh.nodes[0]
        .publish(
            write_package(work.path(), &caller, "1.0.0", &extra, &caller_js),
            1,
            "admin",
        )
        .await
        .expect("caller");
    replicated(&mesh, &caller).await;
    replicated(&mesh, &callee).await;
    for node in &mesh.nodes {
        let outcome = call(node, &caller, json!({"xs": [1, 2, "x", 3, 4, 5, 6]}))
            .await
            .expect("invoke");
        assert_eq!(outcome.output, json!({"avg": 5, "n": 3}));
        assert_eq!(outcome.node, hosts_of(&mesh, &caller, 1)[0]);
    }
    // The example packages compose the same way.
    mesh.nodes[0]
        .publish(example_package("series-cleaner"), 1, "admin")
        .await
        .expect("cleaner");
    mesh.nodes[0]
        .publish(example_package("moving-average"), 1, "admin")
        .await
        .expect("average");
    replicated(&mesh, "moving-average").await;
    let outcome = call(
        &mesh.nodes[2],
        "moving-average",
        json!({"xs": [1, 2, "x", 3, 4, 5, 6]}),
    )
    .await
    .expect("invoke");
    assert_eq!(outcome.output, json!({"avg": 5, "n": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_built_in_is_routed_like_any_function() {
    let mesh = InProcessMesh::start(2).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    mesh.nodes[0]
        .publish(example_package("noop"), 1, "admin")
        .await
        .expect("deploy");
    replicated(&mesh, "noop").await;
    for node in &mesh.nodes {
        let outcome = call(node, "noop", json!({"anything": [1, 2]}))
            .await
            .expect("invoke");
        assert_eq!(outcome.output, json!({}));
        assert_eq!(outcome.served_by, "noop@1.0.0");
    }
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path().join("bad-native");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("klf.toml"),
        "name = \"x\"\nversion = \"1.0.0\"\ntype = \"t\"\nentry = \"native:format-disk\"\n",
    )
    .expect("write");
    let err = klf_actors::functions::package::Package::load(&dir).expect_err("unknown built-in");
    assert!(
        err.to_string().contains("field `entry`") && err.to_string().contains("native:noop"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_succeeding_after_the_hosting_node_dies() {
    let mesh = InProcessMesh::start(3).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(5))
            .await
    );
    mesh.nodes[0]
        .publish(example_package("hello"), 1, "admin")
        .await
        .expect("deploy");
    replicated(&mesh, "hello").await;
    let host = hosts_of(&mesh, "hello", 1)[0].clone();
    let host_index = mesh
        .nodes
        .iter()
        .position(|n| n.identity().node_id == host)
        .expect("host");
    let survivor = &mesh.nodes[(host_index + 1) % 3];
    call(survivor, "hello", json!({}))
        .await
        .expect("works before the failure");

    mesh.nodes[host_index].kill().await;
    let killed = Instant::now();
    let recovered = wait_until(Duration::from_secs(15), || async {
        call(survivor, "hello", json!({})).await.is_ok()
    })
    .await;
    assert!(
        recovered,
        "calls should succeed again once another node hosts the function"
    );
    eprintln!(
        "calls succeed again {:?} after the host died",
        killed.elapsed()
    );
    for _ in 0..20 {
        let outcome = call(survivor, "hello", json!({"name": "again"}))
            .await
            .expect("keeps succeeding");
        assert_ne!(outcome.node, host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_give_typed_errors_and_the_node_keeps_serving() {
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    let node = &mesh.nodes[0];
    let work = tempfile::tempdir().expect("tmp");
    let js = |body: &str| {
        format!(
            "import {{ BaseFunction }} from \"klf:base\";\nexport default class F extends BaseFunction {{\n{body}\n}}\n"
        )
    };
    let deploy = |name: &str, extra: &str, body: &str| {
        write_package(work.path(), name, "1.0.0", extra, &js(body))
    };
    for package in [
        deploy(
            "spin",
            "[limits]\ntimeout_ms = 200",
            "async execute() { while (true) {} }",
        ),
        deploy(
            "bomb",
            "[limits]\nmemory_mb = 8",
            "async execute() { const a = []; while (true) { a.push(new Array(1e5).fill(1)); } }",
        ),
        deploy(
            "faulty",
            "capabilities = [\"kv\"]",
            "async onError(e) { await this.ctx.kv.put(\"last_error\", e.message); }\n\
             async execute(input) { if (input.read) { return { last: await this.ctx.kv.get(\"last_error\") }; } throw new Error(\"boom: \" + input.why); }",
        ),
        deploy(
            "nosy",
            "",
            "async execute() { return await this.ctx.kv.get(\"x\"); }",
        ),
    ] {
        node.publish(package, 1, "admin").await.expect("deploy");
    }
    node.publish(example_package("hello"), 1, "admin")
        .await
        .expect("hello");

    let kind =
        |r: Result<klf_actors::router::InvokeOutcome, klf_actors::router::InvokeError>| match r {
            Ok(o) => panic!("expected an error, got {:?}", o.output),
            Err(e) => {
                eprintln!("{:?}: {}", e.kind, e.message);
                e.kind
            }
        };
    assert_eq!(
        kind(call(node, "nothing", json!({})).await),
        InvokeErrorKind::UnknownFunction
    );
    let mut ranged = InvokeRequest::new("hello", json!({}), Duration::from_secs(5));
    ranged.range = semver::VersionReq::parse("^2").expect("range");
    assert_eq!(
        kind(node.invoke(ranged).await),
        InvokeErrorKind::NoMatchingVersion
    );
    assert_eq!(
        kind(call(node, "spin", json!({})).await),
        InvokeErrorKind::Timeout
    );
    assert_eq!(
        kind(call(node, "bomb", json!({})).await),
        InvokeErrorKind::OutOfMemory
    );
    let thrown = call(node, "faulty", json!({"why": "testing"}))
        .await
        .expect_err("throws");
    assert_eq!(thrown.kind, InvokeErrorKind::UserError);
    assert!(
        thrown.message.contains("boom: testing"),
        "{}",
        thrown.message
    );
    let after = call(node, "faulty", json!({"read": true}))
        .await
        .expect("reads kv");
    assert_eq!(
        after.output,
        json!({"last": "boom: testing"}),
        "onError ran before the caller got the error"
    );
    assert_eq!(
        kind(call(node, "nosy", json!({})).await),
        InvokeErrorKind::CapabilityDenied
    );
    let big = json!({"blob": "x".repeat(klf_actors::router::MAX_INPUT_BYTES)});
    assert_eq!(
        kind(call(node, "hello", big).await),
        InvokeErrorKind::InputTooLarge
    );
    let mut deep = InvokeRequest::new("hello", json!({}), Duration::from_secs(5));
    deep.call_depth = klf_actors::router::MAX_CALL_DEPTH + 1;
    assert_eq!(
        kind(node.invoke(deep).await),
        InvokeErrorKind::CallDepthExceeded
    );
    // A peer's Invoke whose input is not JSON, or whose range does not parse, is refused by kind.
    for (input, range, want) in [
        (b"{not json".to_vec(), "", "bad_input"),
        (b"{}".to_vec(), "not a range", "bad_input"),
        (b"{}".to_vec(), "^9", "no_matching_version"),
    ] {
        let invoke = klf_proto::Invoke {
            function: "hello".into(),
            version_range: range.into(),
            input,
            // A hostile deadline: capped, never an overflow.
            deadline_unix_ms: u64::MAX,
            idempotency_key: None,
            caller_principal: "peer".into(),
            call_depth: 0,
            trace: Default::default(),
        };
        let reply = node.router().serve_remote(invoke).await;
        match reply.outcome {
            Err(failure) => assert_eq!(failure.kind, want, "{}", failure.message),
            Ok(_) => panic!("bad invoke accepted"),
        }
    }

    // After all of that, the node and the same instances still serve.
    assert_eq!(
        call(node, "hello", json!({"name": "still"}))
            .await
            .expect("hello")
            .output,
        json!({"message": "Hello, still!"})
    );
    assert_eq!(
        kind(call(node, "spin", json!({})).await),
        InvokeErrorKind::Timeout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_beyond_the_concurrency_limit_is_overloaded_at_once() {
    // The one permitted call waits on a model whose answers the test holds: it is in flight for
    // exactly as long as the test needs, however slow the machine.
    let model = ModelServer::start(vec![Scripted::Echo])
        .await
        .expect("model server");
    let options = RunOptions {
        model: Some(ModelConfig {
            base_url: model.base_url(),
            model: "fake-gpt".into(),
            api_key: None,
            max_attempts: 1,
            backoff: Duration::from_millis(10),
        }),
        ..RunOptions::loopback()
    };
    let mesh = InProcessMesh::start_with_options(1, options)
        .await
        .expect("mesh");
    let node = &mesh.nodes[0];
    let work = tempfile::tempdir().expect("tmp");
    let busy = write_package(
        work.path(),
        "busy",
        "1.0.0",
        "capabilities = [\"model\"]\n[limits]\nconcurrency = 1\ntimeout_ms = 60000",
        "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction {\n\
         async execute(input, ctx) { return (await ctx.model.complete({ prompt: input.n })).text; }\n}\n",
    );
    node.publish(busy, 1, "admin").await.expect("deploy");
    let invoke = |n: &str| {
        node.invoke(InvokeRequest::new(
            "busy",
            json!({ "n": n }),
            Duration::from_secs(60),
        ))
    };

    model.hold();
    let (first, second) = tokio::join!(invoke("first"), async {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                model.requests().len() == 1
            })
            .await,
            "the first call should reach the model"
        );
        // The first call holds the only permit: the second is refused at once, not queued.
        let second = invoke("second").await;
        model.release();
        second
    });
    assert_eq!(first.expect("the held call").output, json!("echo: first"));
    match second {
        Err(error) => assert_eq!(error.kind, InvokeErrorKind::Overloaded, "{}", error.message),
        Ok(outcome) => panic!("a call beyond the limit ran: {:?}", outcome.output),
    }
    assert_eq!(model.requests().len(), 1, "the refused call never ran");
    // The permit came back with the first call's answer.
    let third = invoke("third").await.expect("the permit is free again");
    assert_eq!(third.output, json!("echo: third"));
}
