//! What the validator's performance test costs for a shipped recipe: the market-analysis package
//! (rendered as `klf chef` renders it) validated on a one-node in-process mesh, its examples run
//! 50 times each, then the load step at 1, 8 and 32 calls in flight. Run with
//! `cargo bench -p klf-tests --bench validator` (`KLF_BENCH_RUNS=N` validations, default 5;
//! `KLF_BENCH_RECIPE` another recipe).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use klf_actors::chef::ingredients::render::render;
use klf_actors::chef::ingredients::{Library, RenderRequest};
use klf_actors::node::validator::PerfOptions;
use klf_tests::InProcessMesh;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bench() -> anyhow::Result<()> {
    let runs: usize = env_or("KLF_BENCH_RUNS", 5);
    let recipe: String = env_or("KLF_BENCH_RECIPE", "market-analysis".to_string());
    let library = Library::shipped();
    let package = render(
        &library,
        &RenderRequest {
            recipe: recipe.clone(),
            name: None,
            set: Default::default(),
        },
    )?
    .package()?;
    let mesh = InProcessMesh::start(1).await?;
    if !mesh.wait_all_alive(&[0], 1, Duration::from_secs(10)).await {
        bail!("the node did not start");
    }
    let node = &mesh.nodes[0];
    println!(
        "{recipe}: {} example(s), 50 runs each, then 1/8/32 in flight",
        package.examples.len()
    );
    println!("  run  whole ms  test ms  p50 ms  p99 ms  calls/s (1, 8, 32 in flight)");
    let mut whole = Vec::new();
    for i in 0..runs {
        let started = Instant::now();
        let validated = node
            .validate_package(&package, PerfOptions::default())
            .await
            .context("validation")?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        whole.push(ms);
        let Some(perf) = validated.perf else {
            bail!("{recipe} has no examples: nothing was measured");
        };
        let f = &perf.figures;
        let load: Vec<String> = f
            .load
            .iter()
            .map(|s| format!("{:.0}", s.calls_per_sec))
            .collect();
        println!(
            "  {i:>3}  {ms:>8.1}  {:>7}  {:>6.2}  {:>6.2}  {}",
            f.elapsed_ms,
            f.p50_us as f64 / 1000.0,
            f.p99_us as f64 / 1000.0,
            load.join(", ")
        );
    }
    whole.sort_by(f64::total_cmp);
    println!(
        "median whole validation {:.1} ms, worst {:.1} ms",
        whole.get(whole.len() / 2).copied().unwrap_or(0.0),
        whole.last().copied().unwrap_or(0.0)
    );
    mesh.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(async { tokio::spawn(bench()).await? })
}
