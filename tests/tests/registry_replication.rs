//! The replicated registry on real in-process nodes: a deploy reaches every node, a node that was
//! down catches up, artifacts are fetched from peers and verified, and bad publishes are refused.

use std::path::Path;
use std::time::{Duration, Instant};

use klf_actors::functions::package::Package;
use klf_actors::node::NodeError;
use klf_actors::registry::{RegistryError, RegistryMsg};
use klf_tests::{InProcessMesh, wait_until, write_package};

fn package(dir: &Path, name: &str, version: &str, deps: &[(&str, &str)], body: &str) -> Package {
    let mut extra = String::from("capabilities = [\"call\"]\n[dependencies]\n");
    for (dep, range) in deps {
        extra.push_str(&format!("\"{dep}\" = \"{range}\"\n"));
    }
    let source = format!(
        "import {{ BaseFunction }} from \"klf:base\";\nexport default class F extends BaseFunction {{ async execute(input) {{ {body} }} }}\n"
    );
    write_package(dir, name, version, &extra, &source)
}

async fn lists_everywhere(mesh: &InProcessMesh, nodes: &[usize], name: &str) -> bool {
    nodes.iter().all(|&i| {
        let catalog = mesh.nodes[i].catalog();
        catalog.deployment(name).is_some() && !catalog.versions(name).is_empty()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reaches_every_node_and_a_node_that_was_down_catches_up() {
    let mut mesh = InProcessMesh::start(3).await.expect("mesh");
    assert!(
        mesh.wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(5))
            .await
    );
    let work = tempfile::tempdir().expect("tmp");

    let release = mesh.nodes[0]
        .publish(
            package(work.path(), "echo", "1.0.0", &[], "return input;"),
            2,
            "admin",
        )
        .await
        .expect("publish");
    assert_eq!(release.manifest.id(), "echo@1.0.0");
    let published = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || async {
            lists_everywhere(&mesh, &[0, 1, 2], "echo").await
        })
        .await,
        "every node should list the function within 3 s"
    );
    eprintln!(
        "deploy replicated to every node after {:?}",
        published.elapsed()
    );

    // node2 is down while something else is deployed, then comes back.
    mesh.nodes[2].kill().await;
    mesh.nodes[0]
        .publish(
            package(work.path(), "late", "1.0.0", &[], "return 1;"),
            1,
            "admin",
        )
        .await
        .expect("publish while a node is down");
    mesh.restart(2).await.expect("node2 restarts");
    let restarted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            lists_everywhere(&mesh, &[2], "late").await
        })
        .await,
        "the restarted node should catch up on what was deployed while it was down"
    );
    eprintln!("restarted node caught up after {:?}", restarted.elapsed());
    // It kept what it knew before, from its own store.
    assert!(lists_everywhere(&mesh, &[2], "echo").await);

    // node1 never stored the artifact: it fetches it from a peer and verifies it.
    let release = mesh.nodes[1].catalog().versions("late")[0].clone();
    let fetched = ractor::call!(mesh.nodes[1].registry(), |reply| RegistryMsg::Package {
        release: Box::new(release),
        reply
    })
    .expect("registry answers")
    .expect("artifact fetched and verified");
    assert_eq!(fetched.manifest.name, "late");
    assert!(fetched.source.contains("return 1;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publishes_are_refused_with_reasons() {
    let mesh = InProcessMesh::start(1).await.expect("mesh");
    let node = &mesh.nodes[0];
    let work = tempfile::tempdir().expect("tmp");
    node.publish(
        package(work.path(), "base", "1.0.0", &[], "return 1;"),
        1,
        "admin",
    )
    .await
    .expect("publish");

    let conflict = node
        .publish(
            package(work.path(), "base", "1.0.0", &[], "return 2;"),
            1,
            "admin",
        )
        .await
        .expect_err("other content under the same version");
    assert!(
        matches!(conflict, NodeError::Registry(RegistryError::Conflict(_))),
        "{conflict}"
    );
    assert!(
        conflict
            .to_string()
            .contains("base@1.0.0 is already published with different content")
    );

    // The same content again is fine (idempotent deploy).
    node.publish(
        package(work.path(), "base", "1.0.0", &[], "return 1;"),
        3,
        "admin",
    )
    .await
    .expect("same content republished");
    assert_eq!(
        node.catalog().deployment("base").map(|d| d.replicas),
        Some(3)
    );

    // The seed's registry operations on the actor itself.
    let app = package(
        work.path(),
        "app",
        "1.0.0",
        &[("base", "^1"), ("nope", "^1")],
        "return 0;",
    );
    let verdict = ractor::call!(node.registry(), |reply| RegistryMsg::ValidateDependencies {
        manifest: Box::new(app.manifest.clone()),
        reply
    })
    .expect("registry answers");
    assert_eq!(
        verdict.expect_err("a dependency is missing")[0].to_string(),
        "app@1.0.0 needs nope ^1, but no published version matches"
    );
    let got = ractor::call!(node.registry(), |reply| RegistryMsg::Get {
        name: "base".into(),
        range: semver::VersionReq::parse("^1").expect("range"),
        reply
    })
    .expect("registry answers");
    assert_eq!(got.map(|r| r.manifest.id()), Some("base@1.0.0".to_string()));
    let all = ractor::call!(node.registry(), RegistryMsg::Discover).expect("registry answers");
    assert_eq!(all.len(), 1);
    let typed = ractor::call!(node.registry(), |reply| RegistryMsg::FindByType {
        kind: "test".into(),
        reply
    })
    .expect("registry answers");
    assert_eq!(typed.len(), 1);

    let missing = node
        .publish(
            package(
                work.path(),
                "app",
                "1.0.0",
                &[("base", "^2"), ("nope", "^1")],
                "return 0;",
            ),
            1,
            "admin",
        )
        .await
        .expect_err("missing dependencies");
    let text = missing.to_string();
    assert!(
        text.contains("needs base ^2") && text.contains("needs nope ^1"),
        "{text}"
    );

    let unknown = node
        .unregister("ghost", None)
        .await
        .expect_err("unknown function");
    assert!(
        unknown.to_string().contains("no function named ghost"),
        "{unknown}"
    );
    let removed = node.unregister("base", None).await.expect("unregister");
    assert!(
        removed.contains(&"deployment/base".to_string()),
        "{removed:?}"
    );
    assert!(node.catalog().versions("base").is_empty());
}
