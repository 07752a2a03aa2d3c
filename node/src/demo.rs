//! `klf demo`: three local nodes in this process, joined by tokens as separate machines would be.
//!
//! It shows the nodes forming a mesh over QUIC with mutual TLS, a function deployed on one node and
//! called from another, a graceful leave, and failure detection. The Chef pipeline (building and
//! serving the market-analysis function) joins it when the Chef layer lands.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use klf_actors::functions::package::Package;
use klf_actors::mesh::{MemberState, MemberView};
use klf_actors::node::{LocalMesh, wait_until};
use klf_actors::router::InvokeRequest;

fn print_members(title: &str, members: &[MemberView]) {
    println!("{title}");
    for m in members {
        let marker = if m.is_self { "  <- observer" } else { "" };
        println!(
            "  {:6} {:16} {:8} {}{marker}",
            m.name,
            m.id,
            m.state.to_string(),
            m.addr
        );
    }
}

pub async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    println!("starting 3 local nodes (temporary data, free ports on 127.0.0.1)...");
    let mesh = LocalMesh::start(3)
        .await
        .context("starting the local mesh")?;
    if !mesh
        .wait_all_alive(&[0, 1, 2], 3, Duration::from_secs(10))
        .await
    {
        bail!("the three nodes did not all see each other alive within 10 s");
    }
    println!(
        "mesh formed in {:.0?}: init + 2 join tokens, mutual TLS, SWIM membership",
        started.elapsed()
    );
    print_members("members seen by node2:", &mesh.nodes[2].members().await?);

    // A function: deployed on node0 with 2 replicas, called from node2.
    let hello = Package::from_parts(
        include_str!("../../examples/hello/klf.toml").to_string(),
        include_str!("../../examples/hello/main.js").to_string(),
        Vec::new(),
    )?;
    let release = mesh.nodes[0].publish(hello, 2, "demo").await?;
    println!(
        "\ndeployed {} from node0 with 2 replicas (artifact {})",
        release.manifest.id(),
        &hex::encode(release.artifact)[..16]
    );
    let ready = Instant::now();
    let outcome = loop {
        let request = InvokeRequest::new(
            "hello",
            serde_json::json!({"name": "KLF"}),
            Duration::from_secs(5),
        );
        match mesh.nodes[2].invoke(request).await {
            Ok(outcome) => break outcome,
            Err(e) if ready.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(%e, "not invocable yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("invoking hello from node2 failed: {e}"),
        }
    };
    let served_by = mesh
        .nodes
        .iter()
        .find(|n| n.identity().node_id == outcome.node)
        .map_or("?", |n| n.settings().name.as_str());
    println!(
        "node2 invoked hello -> {} (served by {} on {served_by})",
        outcome.output, outcome.served_by
    );

    println!("\nnode2 leaves gracefully...");
    let left = Instant::now();
    mesh.nodes[2].shutdown().await;
    let seen = wait_until(Duration::from_secs(5), || async {
        mesh.state_of(0, "node2").await == Some(MemberState::Left)
    })
    .await;
    if !seen {
        bail!("node0 did not see node2 leave");
    }
    println!("node0 saw node2 `left` after {:.0?}", left.elapsed());

    println!("\nnode1 dies without a word (its actors are stopped)...");
    let killed = Instant::now();
    mesh.nodes[1].kill().await;
    let detected = wait_until(Duration::from_secs(15), || async {
        mesh.state_of(0, "node1").await == Some(MemberState::Down)
    })
    .await;
    if !detected {
        bail!("node0 did not detect node1's failure within 15 s");
    }
    println!("node0 declared node1 down after {:.1?}", killed.elapsed());
    print_members("members seen by node0:", &mesh.nodes[0].members().await?);

    mesh.nodes[0].shutdown().await;
    println!("\ndemo finished in {:.1?}", started.elapsed());
    Ok(())
}
