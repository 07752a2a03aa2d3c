//! Watching deployed functions on a real in-process mesh: stats gathered from every member over
//! KLF, rollback pinning a version until the next deploy, and the Monitor rolling a failing new
//! version back to the last good one by itself.

use std::time::{Duration, Instant};

use klf_actors::chef::KitchenOptions;
use klf_actors::chef::monitor::MonitorConfig;
use klf_actors::mesh::{PeerAddr, TransportError, TransportMsg};
use klf_actors::node::{Node, NodeError, RunOptions};
use klf_actors::registry::RegistryError;
use klf_actors::router::{FunctionStats, InvokeRequest};
use klf_proto::{AgentMessage, ErrorCode, Frame};
use klf_tests::{InProcessMesh, wait_until, write_package};
use serde_json::json;

const GOOD: &str = "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction { async execute(input) { return { n: input.n, doubled: input.n * 2 }; } }\n";
/// Throws on three inputs out of four.
const BAD: &str = "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction { async execute(input) { if (input.n % 4 !== 0) { throw new Error(\"broken release\"); } return { n: input.n, doubled: input.n * 2 }; } }\n";

async fn mesh_of_two(monitor: MonitorConfig) -> InProcessMesh {
    let mesh = InProcessMesh::start_with_kitchen(
        2,
        RunOptions::loopback(),
        KitchenOptions {
            monitor,
            ..KitchenOptions::default()
        },
    )
    .await
    .expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1], 2, Duration::from_secs(5))
            .await
    );
    mesh
}

/// Publishes `name@version` running `source` from `node`, deployed with `replicas` instances.
async fn publish(
    node: &Node,
    dir: &std::path::Path,
    name: &str,
    version: &str,
    source: &str,
    replicas: u32,
) {
    node.publish(
        write_package(dir, name, version, "", source),
        replicas,
        "admin",
    )
    .await
    .unwrap_or_else(|e| panic!("publish {name}@{version}: {e}"));
}

/// Waits until every node serves `name@version`.
async fn serving(mesh: &InProcessMesh, name: &str, version: &str) {
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes.iter().all(|n| {
                n.catalog()
                    .served(name)
                    .is_some_and(|r| r.manifest.version.to_string() == version)
            })
        })
        .await,
        "every node should serve {name}@{version} within 5 s"
    );
}

async fn call(node: &Node, name: &str, n: u64) -> Result<String, String> {
    node.invoke(InvokeRequest::new(
        name,
        json!({ "n": n }),
        Duration::from_secs(5),
    ))
    .await
    .map(|o| o.served_by)
    .map_err(|e| format!("{}: {}", e.kind.as_str(), e.message))
}

fn of<'a>(stats: &'a [FunctionStats], id: &str) -> Option<&'a FunctionStats> {
    stats.iter().find(|s| s.id() == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_rolls_a_failing_new_version_back_to_the_last_good_one() {
    let mesh = mesh_of_two(MonitorConfig {
        interval: Duration::from_millis(200),
        ..MonitorConfig::default()
    })
    .await;
    let work = tempfile::tempdir().expect("tmp");
    publish(&mesh.nodes[0], work.path(), "quotes", "1.0.0", GOOD, 2).await;
    serving(&mesh, "quotes", "1.0.0").await;
    for n in 0..30 {
        let node = &mesh.nodes[(n % 2) as usize];
        assert_eq!(call(node, "quotes", n).await.as_deref(), Ok("quotes@1.0.0"));
    }

    publish(&mesh.nodes[1], work.path(), "quotes", "2.0.0", BAD, 2).await;
    serving(&mesh, "quotes", "2.0.0").await;
    let (mut failed, mut calls) = (0, 30);
    let mut n = 100;
    // Call until v2 has failed often enough to be judged (at least 10 recent calls).
    while calls < 30 + 12 {
        let node = &mesh.nodes[(n % 2) as usize];
        match call(node, "quotes", n).await {
            Ok(by) => assert!(by == "quotes@2.0.0" || by == "quotes@1.0.0", "{by}"),
            Err(e) => {
                assert!(e.starts_with("user_error"), "{e}");
                assert!(e.contains("broken release"), "{e}");
                failed += 1;
            }
        }
        calls += 1;
        n += 1;
    }
    assert!(failed >= 8, "v2 fails on most inputs ({failed} of 12)");
    let bad_since = Instant::now();

    // The Monitor notices and rolls back; calls then succeed on v1 again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        n += 1;
        let outcome = call(&mesh.nodes[0], "quotes", n * 4 + 1).await;
        calls += 1;
        match outcome.as_deref() {
            Ok("quotes@1.0.0") => break bad_since.elapsed(),
            Ok(_) => {}
            Err(_) => failed += 1,
        }
        assert!(
            Instant::now() < deadline,
            "the Monitor should roll back to 1.0.0 within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    serving(&mesh, "quotes", "1.0.0").await;
    for n in 1..10 {
        let node = &mesh.nodes[(n % 2) as usize];
        assert_eq!(
            call(node, "quotes", n * 4 + 1).await.as_deref(),
            Ok("quotes@1.0.0")
        );
        calls += 1;
    }

    // Exactly one node acted, and it says why.
    let mut events = Vec::new();
    for kitchen in &mesh.kitchens {
        events.extend(kitchen.monitor_events().await.expect("events"));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(
        (
            event.function.as_str(),
            event.from_version.as_str(),
            event.to_version.as_str()
        ),
        ("quotes", "2.0.0", "1.0.0")
    );
    assert!(event.reason.contains("calls failed"), "{}", event.reason);
    assert!(event.recent_calls >= 10 && event.recent_errors * 2 > event.recent_calls);
    println!(
        "rolled back in {recovered:?} after the 12th call on v2: {}",
        event.reason
    );

    // Both nodes see the same mesh-wide stats; every call was counted once, where it ran.
    let seen = mesh.nodes[0].mesh_function_stats().await;
    assert_eq!(seen, mesh.nodes[1].mesh_function_stats().await);
    let (v1, v2) = (
        of(&seen, "quotes@1.0.0").expect("v1 stats"),
        of(&seen, "quotes@2.0.0").expect("v2 stats"),
    );
    assert_eq!(v1.calls + v2.calls, calls);
    assert_eq!(v1.errors + v2.errors, failed);
    assert_eq!(v2.error_kinds.get("user_error"), Some(&v2.errors));
    assert_eq!(v1.errors, 0);
    assert!(v1.p50_us > 0 && v1.p99_us >= v1.p50_us, "{v1:?}");
    let local: u64 = mesh
        .nodes
        .iter()
        .flat_map(|n| n.function_stats())
        .map(|s| s.calls)
        .sum();
    assert_eq!(
        local, calls,
        "each call is counted on the node that served it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_pins_a_published_version_until_the_next_deploy() {
    let mesh = mesh_of_two(MonitorConfig {
        enabled: false,
        ..MonitorConfig::default()
    })
    .await;
    let work = tempfile::tempdir().expect("tmp");
    for version in ["1.0.0", "1.1.0"] {
        publish(&mesh.nodes[0], work.path(), "pinned", version, GOOD, 1).await;
    }
    serving(&mesh, "pinned", "1.1.0").await;

    let refused = mesh.nodes[1]
        .rollback("pinned", semver::Version::new(0, 9, 0))
        .await
        .expect_err("0.9.0 is not published");
    assert!(
        matches!(
            refused,
            NodeError::Registry(RegistryError::VersionNotPublished { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "pinned@0.9.0 is not published (published: 1.1.0, 1.0.0); roll back to one of those"
    );
    let unknown = mesh.nodes[1]
        .rollback("nothing", semver::Version::new(1, 0, 0))
        .await
        .expect_err("no such function");
    assert_eq!(unknown.to_string(), "no function named nothing");

    let pinned = mesh.nodes[1]
        .rollback("pinned", semver::Version::new(1, 0, 0))
        .await
        .expect("rollback");
    assert_eq!(pinned.version, Some(semver::Version::new(1, 0, 0)));
    serving(&mesh, "pinned", "1.0.0").await;
    for node in &mesh.nodes {
        assert_eq!(call(node, "pinned", 1).await.as_deref(), Ok("pinned@1.0.0"));
    }

    // A deploy of a new version unpins: the new highest serves.
    publish(&mesh.nodes[0], work.path(), "pinned", "1.2.0", GOOD, 1).await;
    serving(&mesh, "pinned", "1.2.0").await;
    assert_eq!(
        mesh.nodes[0]
            .catalog()
            .deployment("pinned")
            .and_then(|d| d.version.clone()),
        None
    );
    for node in &mesh.nodes {
        assert_eq!(call(node, "pinned", 1).await.as_deref(), Ok("pinned@1.2.0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_answer_stats_requests_and_refuse_unknown_agent_kinds_with_a_typed_error() {
    let mesh = mesh_of_two(MonitorConfig {
        enabled: false,
        ..MonitorConfig::default()
    })
    .await;
    let target = PeerAddr {
        addr: mesh.nodes[0].identity().addr.clone(),
        node_id: Some(mesh.nodes[0].identity().node_id.clone()),
    };
    let asker = &mesh.nodes[1];
    let ask = |kind: &str| {
        let frame = Frame::Agent(AgentMessage {
            run_id: "r1".into(),
            from_agent: "test".into(),
            to_agent: "node".into(),
            kind: kind.into(),
            body: Vec::new(),
        });
        let to = target.clone();
        async move {
            ractor::call!(asker.transport(), |reply| TransportMsg::Request {
                to,
                frame,
                reply
            })
            .expect("transport answers")
        }
    };
    match ask("stats").await {
        Ok(Frame::Agent(answer)) => {
            assert_eq!(
                (answer.kind.as_str(), answer.run_id.as_str()),
                ("stats", "r1")
            );
            let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
            assert_eq!(body, json!([]));
        }
        other => panic!("stats answered with {other:?}"),
    }
    // The peer's error frame arrives as the transport's typed remote error.
    match ask("make-coffee").await {
        Err(TransportError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::Unsupported);
            assert!(message.contains("\"make-coffee\""), "{message}");
        }
        other => panic!("unknown kind answered with {other:?}"),
    }
}
