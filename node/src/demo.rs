//! `klf demo`: three local nodes in this process, joined by tokens as separate machines would be.
//!
//! It shows the nodes forming a mesh over QUIC with mutual TLS; the Chef turning the product model's example request (docs/product.md),
//! "Analyze market data and find opportunities", into a function built from BaseDataProcessor,
//! BaseModelProcessor and BasePredictor, validated, tested and deployed with 2 replicas; the third
//! node calling it on bundled sample market data; the run's stages and ROI; a function deployed by
//! hand; a graceful leave; and failure detection.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use klf_actors::chef::{Chef, ChefOptions, RunOutcome};
use klf_actors::functions::package::Package;
use klf_actors::mesh::{MemberState, MemberView};
use klf_actors::router::InvokeRequest;
use klf_actors::{LocalMesh, wait_until};

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

    market_analysis(&mesh).await?;

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

/// The bundled sample: 20 trading days of six symbols.
const MARKET_DATA: &str = include_str!("../../examples/data/market-data.json");

/// The Chef builds the product model's example (docs/product.md) on node0; node2 calls it.
async fn market_analysis(mesh: &LocalMesh) -> anyhow::Result<()> {
    let request = "Analyze market data and find opportunities";
    let mut chefs = Vec::new();
    for (i, kitchen) in mesh.kitchens.iter().enumerate() {
        let (providers, problems) = klf_actors::chef::providers::node_providers();
        // Every node reads the same environment: say what is missing once.
        if i == 0 {
            for problem in problems {
                println!("(chef provider not available: {problem})");
            }
        }
        chefs.push(Chef::start(kitchen.clone(), providers).await?);
    }
    println!("\nchef on node0: \"{request}\" (provider offline, deploy with 2 replicas)");
    let (events, mut receive) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut display =
            crate::chef::Progress::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
        while let Some(event) = receive.recv().await {
            display.event(&event);
        }
    });
    let options = ChefOptions {
        deploy: true,
        replicas: 2,
        ..ChefOptions::default()
    };
    let run = chefs[0].run(request, &options, Some(events)).await?;
    let _ = printer.await;
    print!("{}", crate::chef::summary(&run));
    let RunOutcome::Deployed { function, .. } = &run.outcome else {
        bail!("the chef did not deploy the market-analysis function");
    };
    let stage_ms: Vec<String> = run
        .stages
        .iter()
        .map(|s| format!("{} {} ms", s.stage, s.ms))
        .collect();
    println!(
        "stages:     {} (total {} ms)",
        stage_ms.join(", "),
        run.total_ms
    );

    let input: serde_json::Value =
        serde_json::from_str(MARKET_DATA).context("the bundled market data")?;
    let symbols = input["series"].as_array().map_or(0, Vec::len);
    let wait = Instant::now();
    let outcome = loop {
        let call = InvokeRequest::new(function, input.clone(), Duration::from_secs(10));
        match mesh.nodes[2].invoke(call).await {
            Ok(outcome) => break outcome,
            Err(e) if wait.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(%e, "not invocable from node2 yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("invoking {function} from node2 failed: {e}"),
        }
    };
    let served_on = mesh
        .nodes
        .iter()
        .find(|n| n.identity().node_id == outcome.node)
        .map_or("?", |n| n.settings().name.as_str());
    println!(
        "\nnode2 invoked {} on {symbols} bundled closes (examples/data/market-data.json), served on {served_on}:",
        outcome.served_by
    );
    let output = &outcome.output;
    for o in output["opportunities"].as_array().into_iter().flatten() {
        println!(
            "  {:5} {:6} score {:.2}  last {:>8}  next {:>8}  {}",
            o["symbol"].as_str().unwrap_or("?"),
            o["signal"].as_str().unwrap_or("?"),
            o["score"].as_f64().unwrap_or(0.0),
            o["last_close"],
            o["forecast_next"],
            o["reasons"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        );
    }
    println!("result JSON: {output}");

    match mesh.kitchens[0].roi(Some(function)).await {
        Ok(roi) => print!("\n{}", crate::roi::render(&roi)),
        Err(e) => println!("\nROI unavailable: {e}"),
    }
    for chef in &chefs {
        chef.stop();
    }
    Ok(())
}
