//! Canaries on a real in-process mesh: a new version published as a canary is served by one node
//! beside the stable version, and the Monitor promotes it (served everywhere) or rolls it back
//! (the stable version stays) from the calls it served; `klf chef --update` builds the next minor
//! version and deploys it that way.

use std::sync::Arc;
use std::time::Duration;

use klf_actors::chef::KitchenOptions;
use klf_actors::chef::monitor::MonitorConfig;
use klf_actors::chef::providers::Provider;
use klf_actors::chef::providers::offline::Offline;
use klf_actors::chef::{Chef, ChefOptions, RunOutcome};
use klf_actors::node::{Node, RunOptions};
use klf_actors::router::InvokeRequest;
use klf_tests::{InProcessMesh, wait_until, write_package};
use serde_json::json;

const GOOD: &str = "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction { async execute(input) { return { n: input.n, doubled: input.n * 2 }; } }\n";
/// Throws on three inputs out of four.
const BAD: &str = "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction { async execute(input) { if (input.n % 4 !== 0) { throw new Error(\"broken release\"); } return { n: input.n, doubled: input.n * 2 }; } }\n";

async fn mesh_of_three() -> InProcessMesh {
    let mesh = InProcessMesh::start_with_kitchen(
        3,
        RunOptions::loopback(),
        KitchenOptions {
            monitor: MonitorConfig {
                interval: Duration::from_millis(200),
                canary_min_calls: 10,
                ..MonitorConfig::default()
            },
            ..KitchenOptions::default()
        },
    )
    .await
    .expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(10))
            .await
    );
    mesh
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_a_good_one_promoted_by_the_monitor() {
    let mesh = mesh_of_three().await;
    let work = tempfile::tempdir().expect("tmp");
    let node = &mesh.nodes[0];
    node.publish(
        write_package(work.path(), "quotes", "1.0.0", "", GOOD),
        1,
        "admin",
    )
    .await
    .expect("publish 1.0.0");
    node.wait_serving(
        "quotes",
        &semver::Version::new(1, 0, 0),
        json!({"n": 4}),
        Duration::from_secs(10),
    )
    .await
    .expect("1.0.0 serves");

    // A bad canary: one node serves it, the others keep serving 1.0.0.
    let canary = node
        .publish_canary(
            write_package(work.path(), "quotes", "1.1.0", "", BAD),
            "admin",
        )
        .await
        .expect("canary 1.1.0");
    assert_eq!(canary.manifest.version, semver::Version::new(1, 1, 0));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes
                .iter()
                .all(|n| n.catalog().canary("quotes").is_some())
        })
        .await
    );
    node.wait_serving(
        "quotes",
        &semver::Version::new(1, 1, 0),
        json!({"n": 4}),
        Duration::from_secs(10),
    )
    .await
    .expect("the canary serves");
    for n in &mesh.nodes {
        assert_eq!(
            n.catalog()
                .served("quotes")
                .map(|r| r.manifest.version.to_string()),
            Some("1.0.0".to_string()),
            "during the canary the deployment serves the stable version"
        );
    }
    let canary_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stable_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut n = 0u64;
    let ended = wait_until(Duration::from_secs(30), || {
        n += 1;
        let caller = mesh.nodes[(n % 3) as usize].clone();
        let observer = mesh.nodes[0].clone();
        let (canary_calls, stable_calls) = (canary_calls.clone(), stable_calls.clone());
        async move {
            match call(&caller, "quotes", n).await.as_deref() {
                Ok("quotes@1.0.0") => {
                    stable_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) | Err(_) => {
                    canary_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            observer.catalog().canary("quotes").is_none()
        }
    })
    .await;
    assert!(ended, "the Monitor never ended the failing canary");
    let to_canary = canary_calls.load(std::sync::atomic::Ordering::Relaxed);
    let to_stable = stable_calls.load(std::sync::atomic::Ordering::Relaxed);
    // The trial's other calls were the readiness probes of `wait_serving` above; the Monitor's
    // event below states the whole count (at least its minimum of 10).
    assert!(to_canary > 0, "this loop reached the canary: {to_canary}");
    assert!(
        to_stable > 0,
        "the stable version kept serving beside it: {to_stable}"
    );
    // Rolled back: 1.0.0 is served everywhere, and the Monitor says why.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            mesh.nodes.iter().all(|n| {
                n.catalog().canary("quotes").is_none()
                    && n.catalog()
                        .served("quotes")
                        .map(|r| r.manifest.version.to_string())
                        == Some("1.0.0".into())
            })
        })
        .await
    );
    for i in 0..12u64 {
        assert_eq!(
            call(&mesh.nodes[(i % 3) as usize], "quotes", i * 4 + 1)
                .await
                .as_deref(),
            Ok("quotes@1.0.0")
        );
    }
    let mut events = Vec::new();
    for kitchen in &mesh.kitchens {
        events.extend(kitchen.monitor_events().await.expect("events"));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].action, "canary-rolled-back");
    assert_eq!(
        (
            events[0].from_version.as_str(),
            events[0].to_version.as_str()
        ),
        ("1.1.0", "1.0.0")
    );
    let trial: u64 = events[0]
        .reason
        .split(" of ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        trial >= 10,
        "the canary served its trial: {}",
        events[0].reason
    );
    assert!(
        events[0].reason.contains("canary calls failed"),
        "{}",
        events[0].reason
    );

    // A good canary is promoted: then it serves everywhere.
    node.publish_canary(
        write_package(work.path(), "quotes", "1.2.0", "", GOOD),
        "admin",
    )
    .await
    .expect("canary 1.2.0");
    node.wait_serving(
        "quotes",
        &semver::Version::new(1, 2, 0),
        json!({"n": 4}),
        Duration::from_secs(10),
    )
    .await
    .expect("the good canary serves");
    let mut n = 0u64;
    let promoted = wait_until(Duration::from_secs(30), || {
        n += 1;
        let caller = mesh.nodes[(n % 3) as usize].clone();
        let observer = mesh.nodes[0].clone();
        async move {
            let _ = call(&caller, "quotes", n).await;
            observer
                .catalog()
                .served("quotes")
                .is_some_and(|r| r.manifest.version == semver::Version::new(1, 2, 0))
                && observer.catalog().canary("quotes").is_none()
        }
    })
    .await;
    assert!(promoted, "the Monitor never promoted the good canary");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chef_update_builds_the_next_minor_version_as_a_canary() {
    let mesh = mesh_of_three().await;
    let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(Offline)];
    let chef = Chef::start(mesh.kitchens[0].clone(), providers)
        .await
        .expect("chef");
    let request = "convert CSV text into JSON records";
    let deploy = ChefOptions {
        deploy: true,
        ..ChefOptions::default()
    };
    let first = chef.run(request, &deploy, None).await.expect("run");
    let RunOutcome::Deployed {
        function, version, ..
    } = &first.outcome
    else {
        panic!("{:?}\n{:#?}", first.outcome, first.stages);
    };
    assert_eq!(version, "1.0.0");
    let update = ChefOptions {
        update: Some(function.clone()),
        ..deploy.clone()
    };
    let second = chef.run(request, &update, None).await.expect("run");
    let RunOutcome::Deployed { version, .. } = &second.outcome else {
        panic!("{:?}\n{:#?}", second.outcome, second.stages);
    };
    assert_eq!(version, "1.1.0", "an update is the next minor version");
    let deploy_stage = second
        .stages
        .iter()
        .find(|s| s.stage == "deploy")
        .expect("deploy stage");
    assert!(
        deploy_stage.detail.contains("as a canary"),
        "{}",
        deploy_stage.detail
    );
    assert!(mesh.nodes[0].catalog().canary(function).is_some());
    // A rebuild without --update is the next patch; nothing is ever republished under 1.0.0.
    let mesh_catalog = mesh.nodes[0].catalog();
    let published: Vec<String> = mesh_catalog
        .versions(function)
        .iter()
        .map(|r| r.manifest.version.to_string())
        .collect();
    assert_eq!(published, ["1.1.0", "1.0.0"]);
    // The update is a function of the same name: --update on a missing one is refused.
    let missing = ChefOptions {
        update: Some("no-such-function".into()),
        ..deploy
    };
    let refused = chef.run(request, &missing, None).await.expect("run");
    let RunOutcome::Failed { reasons } = &refused.outcome else {
        panic!("{:?}", refused.outcome);
    };
    assert!(
        reasons[0].contains("no function named no-such-function is published"),
        "{reasons:?}"
    );
    mesh.shutdown().await;
}
