//! Where a Chef run's time goes, stage by stage, on a real two-node in-process mesh. Run with
//! `cargo bench -p klf-tests --bench chef` (`KLF_BENCH_RUNS=N`, default 5).
//!
//! - offline: the market-analysis request (recipe choice, 20 held tests, render, validate, test,
//!   deploy with 2 replicas, monitor), as `klf demo` runs it;
//! - scripted model: a request no recipe fits, written by the model (requirement, tests and code
//!   exchanges) against a scripted chat-completions server on loopback that answers at once, so the
//!   figures are the pipeline's own work without model time.
//!
//! Each run publishes a new version (a rebuild is the next patch), so later runs pay what a
//! repeated request pays. Prints the median and the worst of each stage and of the whole run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use klf_actors::chef::providers::Provider;
use klf_actors::chef::providers::model::ModelBacked;
use klf_actors::chef::providers::offline::Offline;
use klf_actors::chef::{Chef, ChefOptions, ChefRun};
use klf_actors::model::{ModelConfig, OpenAiCompatible};
use klf_tests::InProcessMesh;
use klf_tests::model_server::{ModelServer, Scripted};
use serde_json::json;

fn runs() -> usize {
    std::env::var("KLF_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

/// The scripted exchanges of one model-written run: no recipe, requirement, tests, code.
fn script() -> Vec<Scripted> {
    let requirement = json!({
        "name": "triple", "type": "math", "goal": "Triple a number",
        "description": "Returns three times x.",
        "input_schema": {"type": "object", "required": ["x"], "properties": {"x": {"type": "number"}}},
        "output_schema": {"type": "object", "required": ["tripled"], "properties": {"tripled": {"type": "number"}}},
        "examples": [
            {"name": "seven", "input": {"x": 7}, "output": {"tripled": 21}},
            {"name": "zero", "input": {"x": 0}, "output": {"tripled": 0}},
            {"name": "not a number", "input": {"x": "a"}, "error": "input.x"}
        ],
        "capabilities": [], "dependencies": {},
        "limits": {"memory_mb": 16, "timeout_ms": 1000, "latency_budget_ms": 50}
    });
    let tests =
        json!({"tests": [{"name": "negative", "input": {"x": -2}, "output": {"tripled": -6}}]});
    let code = json!({
        "klf.toml": "idempotent = true\ncapabilities = []\n[limits]\nmemory_mb = 16\ntimeout_ms = 1000\n",
        "main.js": "import { BaseFunction, KlfInputError } from \"klf:base\";\nexport default class T extends BaseFunction {\n  async execute(input) {\n    if (typeof input?.x !== \"number\") throw new KlfInputError(\"input.x must be a number\");\n    return { tripled: input.x * 3 };\n  }\n}\n"
    });
    vec![
        Scripted::Content(json!({"recipe": null, "reason": "none multiplies"}).to_string()),
        Scripted::Content(requirement.to_string()),
        Scripted::Content(tests.to_string()),
        Scripted::Content(code.to_string()),
    ]
}

fn report(label: &str, runs: &[ChefRun]) {
    let mut stages: BTreeMap<(usize, String), Vec<u64>> = BTreeMap::new();
    for run in runs {
        for (i, stage) in run.stages.iter().enumerate() {
            stages
                .entry((i, stage.stage.clone()))
                .or_default()
                .push(stage.ms);
        }
    }
    println!("\n{label} ({} runs): median / worst ms", runs.len());
    let show = |name: &str, mut ms: Vec<u64>| {
        ms.sort_unstable();
        let median = ms.get(ms.len() / 2).copied().unwrap_or(0);
        let worst = ms.last().copied().unwrap_or(0);
        println!("  {name:<14} {median:>6} {worst:>6}");
    };
    for ((_, name), ms) in stages {
        show(&name, ms);
    }
    show("whole run", runs.iter().map(|r| r.total_ms).collect());
}

async fn bench() -> anyhow::Result<()> {
    let n = runs();
    let mesh = InProcessMesh::start(2).await?;
    if !mesh
        .wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
        .await
    {
        bail!("the mesh did not form");
    }
    let offline = Chef::start(
        mesh.kitchens[0].clone(),
        vec![Arc::new(Offline) as Arc<dyn Provider>],
    )
    .await?;
    let deploy = ChefOptions {
        deploy: true,
        replicas: 2,
        ..ChefOptions::default()
    };
    let mut runs = Vec::new();
    for _ in 0..n {
        let run = offline
            .run("Analyze market data and find opportunities", &deploy, None)
            .await?;
        if !run.succeeded() {
            bail!("an offline run failed: {:?}", run.outcome);
        }
        runs.push(run);
    }
    report("offline: market analysis, 2 replicas", &runs);
    offline.stop();

    let mut runs = Vec::new();
    for _ in 0..n {
        // A fresh server per run: its script starts over.
        let server = ModelServer::start(script()).await?;
        let client = OpenAiCompatible::new(ModelConfig {
            base_url: server.base_url(),
            model: "scripted".into(),
            api_key: None,
            max_attempts: 1,
            backoff: Duration::from_millis(10),
        })?;
        let provider: Arc<dyn Provider> = Arc::new(ModelBacked::new(Arc::new(client), "openai"));
        let chef = Chef::start(mesh.kitchens[0].clone(), vec![provider]).await?;
        let options = ChefOptions {
            provider: "openai".into(),
            deploy: true,
            replicas: 1,
            ..ChefOptions::default()
        };
        let run = chef.run("Triple a number", &options, None).await?;
        chef.stop();
        if !run.succeeded() {
            bail!("a scripted-model run failed: {:?}", run.outcome);
        }
        runs.push(run);
    }
    report(
        "scripted model: a function the model writes (no model time)",
        &runs,
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
