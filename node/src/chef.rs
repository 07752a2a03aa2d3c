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
    /// Have the model write the function even when a recipe fits (needs --provider openai).
    #[arg(long)]
    pub fresh: bool,
    /// Generate a random key for each secret the function needs that no node holds, and store it
    /// on every node (without it, such a run fails naming the secret and how to create it).
    #[arg(long)]
    pub create_secrets: bool,
    /// Wall-clock limit of the whole run; it then ends `failed`, naming the stage.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub deadline: std::time::Duration,
    /// Model tokens (in + out) the run may spend.
    #[arg(long, value_name = "TOKENS")]
    pub token_budget: Option<u64>,
    /// `max_tokens` of one model exchange of a stage: STAGE=N with STAGE interpret, write-tests
    /// or generate (defaults 2048, 2048, 4096). Repeatable.
    #[arg(long = "max-tokens", value_name = "STAGE=N")]
    pub max_tokens: Vec<String>,
    /// Build the next minor version of this deployed function from its current package, named
    /// NAME whatever the request suggests (implies --deploy's checks; deploy it with --deploy).
    #[arg(long, value_name = "NAME")]
    pub update: Option<String>,
    /// The validator's performance test before the deploy: `fail` refuses a function over its
    /// latency budget or `[limits]`, `warn` deploys it with warnings, `off` skips the test.
    #[arg(long, value_enum, default_value_t = crate::functions::PerfArg::Fail)]
    pub perf: crate::functions::PerfArg,
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
    let mut max_tokens = BTreeMap::new();
    for item in &args.max_tokens {
        let parsed = item
            .split_once('=')
            .and_then(|(stage, n)| Some((stage.to_string(), n.parse::<u32>().ok()?)));
        let Some((stage, n)) = parsed else {
            bail!("--max-tokens takes STAGE=N (for example generate=8192), not {item:?}");
        };
        max_tokens.insert(stage, n);
    }
    let deadline_ms = u64::try_from(args.deadline.as_millis()).unwrap_or(u64::MAX);
    let body = ChefRequest {
        request: args.request.clone(),
        provider: Some(args.provider.clone()),
        deploy: args.deploy,
        replicas: Some(args.replicas),
        placement,
        fresh: args.fresh,
        create_secrets: args.create_secrets,
        deadline_ms: Some(deadline_ms),
        token_budget: args.token_budget,
        max_tokens,
        update: args.update.clone(),
        perf: Some(args.perf.into()),
    };
    let api = api.with_timeout(args.deadline + std::time::Duration::from_secs(30));
    let live = !args.client.json;
    let mut display = Progress::new(std::io::stdout().is_terminal());
    let mut run: Option<ChefRun> = None;
    api.post_chef_stream("/v1/chef", &body, |line| {
        match line {
            ChefStreamLine::Stage { event } if live => display.event(&event),
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

/// How stages show while a run goes: on a terminal a spinner per running stage, with the tokens a
/// streaming model exchange has produced, its rate and the time so far, replaced by the stage's
/// result line when it ends; elsewhere (a pipe, a log) plain lines, a progress line at most every
/// two seconds per stage.
pub struct Progress {
    spinner: Option<indicatif::ProgressBar>,
    terminal: bool,
    /// When the last plain progress line was printed.
    last_plain: Option<std::time::Instant>,
}

/// Every plain progress line this far apart at most.
const PLAIN_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Self {
            spinner: None,
            terminal,
            last_plain: None,
        }
    }

    /// Shows one stage event.
    pub fn event(&mut self, event: &StageEvent) {
        match event.status.as_str() {
            "started" => {
                self.last_plain = None;
                if !self.terminal {
                    // A plain log shows that a stage is under way, however long it takes.
                    println!("  … {}", event.stage);
                }
                if self.terminal {
                    let spinner = indicatif::ProgressBar::new_spinner();
                    spinner.set_message(format!("{:<22}", event.stage));
                    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                    self.spinner = Some(spinner);
                }
            }
            "progress" => {
                let Some(progress) = event.progress else {
                    return;
                };
                let line = format!(
                    "{:<22} {} tokens, {:.1} tokens/s, {:.1} s",
                    event.stage,
                    progress.tokens,
                    progress.tokens_per_s,
                    progress.elapsed_ms as f64 / 1000.0
                );
                match &self.spinner {
                    Some(spinner) => spinner.set_message(line),
                    None => {
                        let due = self
                            .last_plain
                            .is_none_or(|at| at.elapsed() >= PLAIN_PROGRESS_EVERY);
                        if due {
                            println!("  … {line}");
                            self.last_plain = Some(std::time::Instant::now());
                        }
                    }
                }
            }
            status => {
                if let Some(spinner) = self.spinner.take() {
                    spinner.finish_and_clear();
                }
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
