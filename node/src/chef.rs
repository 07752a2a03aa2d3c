//! `klf chef "REQUEST"`: has the node's Chef turn a plain-language request into a validated,
//! tested (and with `--deploy`, deployed) function, showing each stage as it runs.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{Context, bail};
use clap::Args;
use klf_actors::chef::{ChefRun, RunOutcome, StageEvent};

use crate::api::types::{ChefRequest, ChefStreamLine};
use crate::client::{ApiClient, ClientOptions};

#[derive(Debug, Args)]
pub struct ChefArgs {
    /// What the function should do, in plain language.
    pub request: String,
    /// `offline` (no network, the default), `openai` (the node's KLF_MODEL_BASE_URL endpoint) or
    /// `replay` (the node's KLF_CHEF_REPLAY recording).
    #[arg(long, default_value = "offline")]
    pub provider: String,
    /// Deploy the function once it passes its tests.
    #[arg(long)]
    pub deploy: bool,
    /// Replicas when deploying.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Run an agent on another node: ROLE=NODE (for example code-validator=n2). Repeatable.
    #[arg(long = "agent-on", value_name = "ROLE=NODE")]
    pub agent_on: Vec<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// Runs `klf chef`.
pub async fn run(args: ChefArgs) -> anyhow::Result<()> {
    let api =
        ApiClient::from_options(&args.client)?.with_timeout(std::time::Duration::from_secs(600));
    let mut placement = BTreeMap::new();
    for item in &args.agent_on {
        let Some((role, node)) = item.split_once('=') else {
            bail!("--agent-on takes ROLE=NODE, not {item:?}");
        };
        placement.insert(role.to_string(), node.to_string());
    }
    let body = ChefRequest {
        request: args.request.clone(),
        provider: Some(args.provider.clone()),
        deploy: args.deploy,
        replicas: Some(args.replicas),
        placement,
    };
    let live = !args.client.json;
    let terminal = std::io::stdout().is_terminal();
    let mut run: Option<ChefRun> = None;
    api.post_chef_stream("/v1/chef", &body, |line| {
        match line {
            ChefStreamLine::Stage { event } if live => print_event(&event, terminal),
            ChefStreamLine::Stage { .. } => {}
            ChefStreamLine::Run { run: finished } => run = Some(*finished),
            ChefStreamLine::Error { message } => bail!("{message}"),
        }
        Ok(())
    })
    .await?;
    let run = run.context("the node ended the stream without the run")?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print!("{}", summary(&run));
    }
    match &run.outcome {
        RunOutcome::Deployed { .. } | RunOutcome::Built { .. } => Ok(()),
        RunOutcome::NoMatch(_) => bail!("no recipe fits the request; nothing was built"),
        RunOutcome::Failed { .. } => {
            bail!("the chef could not build a function that passes its tests")
        }
    }
}

/// One progress line. On a terminal, a started stage shows as a spinner-like line that its end
/// overwrites.
pub fn print_event(event: &StageEvent, terminal: bool) {
    match event.status.as_str() {
        "started" if terminal => {
            print!("  … {:<22}\r", event.stage);
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        "started" => {}
        status => {
            let mark = if status == "done" { "✓" } else { "✗" };
            println!(
                "  {mark} {:<22} {:>6} ms  [{}] {}",
                event.stage,
                event.ms.unwrap_or(0),
                event.node,
                event.detail
            );
        }
    }
}

/// What a person wants to know after a run.
pub fn summary(run: &ChefRun) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(r) = &run.requirement {
        let _ = writeln!(
            out,
            "\ninterpretation: {} → recipe {} ({})",
            r.request, r.recipe, r.goal
        );
        let _ = writeln!(out, "  function:   {}", r.function);
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| format!("{} ({})", s.base_class, s.description))
            .collect();
        let _ = writeln!(out, "  steps:      {}", steps.join(" → "));
        let params: Vec<String> = r
            .params
            .iter()
            .map(|(k, v)| {
                let from = if r.extracted.contains(k) {
                    " (from the request)"
                } else {
                    ""
                };
                format!("{k}={v}{from}")
            })
            .collect();
        let _ = writeln!(out, "  parameters: {}", params.join(", "));
        let _ = writeln!(out, "  confidence: {:.2}", r.confidence);
    }
    if let Some(dir) = &run.code_dir {
        let _ = writeln!(out, "code:       {dir}");
    }
    if let Some(v) = &run.validation {
        let checks: Vec<String> = v
            .checks
            .iter()
            .map(|(name, ok)| format!("{name} {}", if *ok { "ok" } else { "FAILED" }))
            .collect();
        let _ = writeln!(out, "validation: {}", checks.join(", "));
        for w in &v.warnings {
            let _ = writeln!(out, "  warning: {}", w.message);
        }
    }
    if let Some(t) = &run.tests {
        let _ = writeln!(out, "tests:      {} passed, {} failed", t.passed, t.failed);
        for case in t.cases.iter().filter(|c| !c.passed) {
            let _ = writeln!(
                out,
                "  ✗ {}: {}",
                case.name,
                case.detail.clone().unwrap_or_default()
            );
        }
    }
    if run.repairs > 0 {
        let _ = writeln!(out, "repairs:    {}", run.repairs);
    }
    if run.tokens_in + run.tokens_out > 0 {
        let _ = writeln!(
            out,
            "tokens:     {} in, {} out",
            run.tokens_in, run.tokens_out
        );
    }
    match &run.outcome {
        RunOutcome::Deployed {
            function,
            version,
            replicas,
        } => {
            let _ = writeln!(
                out,
                "deployed:   {function}@{version} ({replicas} replicas) in {} ms",
                run.total_ms
            );
        }
        RunOutcome::Built { function, version } => {
            let _ = writeln!(
                out,
                "built:      {function}@{version} (not deployed; pass --deploy) in {} ms",
                run.total_ms
            );
        }
        RunOutcome::NoMatch(no) => {
            let _ = writeln!(out, "\nno recipe fits: {}", no.reason);
            for c in &no.closest {
                let _ = writeln!(
                    out,
                    "  closest: {} — {} (score {:.2})",
                    c.recipe, c.title, c.score
                );
            }
        }
        RunOutcome::Failed { reasons } => {
            let _ = writeln!(out, "failed:");
            for reason in reasons {
                let _ = writeln!(out, "  {reason}");
            }
        }
    }
    out
}
