//! `klf fn …`: deploy, list, inspect and remove functions through a node's API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use klf_actors::functions::package::Package;
use klf_actors::router::test_run::TestRun;
use serde::Serialize;
use serde_json::Value;

use crate::api::types::{
    AuditEntry, DeployRequest, Deployed, FunctionInfo, FunctionSummary, PackageBody, PerfModeBody,
    PerfSettings, PerfView, ReleaseView, Removed, TestCaseResult, YankRequest, YankView,
};
use crate::client::{ApiClient, ClientOptions};

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Validate and publish the package in DIR, and deploy it.
    Deploy {
        /// The package folder (klf.toml, the entry module, optional examples/).
        dir: PathBuf,
        /// How many instances the mesh keeps running.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// The validator's performance test: `fail` refuses a deploy over budget, `warn` reports
        /// it, `off` skips the test.
        #[arg(long, value_enum, default_value_t = PerfArg::Fail)]
        perf: PerfArg,
        /// Timed runs of each example in the performance test.
        #[arg(long, default_value_t = 50)]
        perf_runs: u32,
        /// The p99 latency one call may take, in milliseconds (besides `[limits] timeout_ms`).
        #[arg(long)]
        latency_budget_ms: Option<u64>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// List functions (optionally of one type).
    Ls {
        #[arg(long = "type")]
        kind: Option<String>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Show a function: NAME or NAME@RANGE.
    Info {
        target: String,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// The resolved dependency graph of NAME or NAME@RANGE, dependencies first.
    Deps {
        target: String,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Call a function: NAME or NAME@RANGE; prints the output JSON alone on stdout.
    Invoke {
        target: String,
        /// The input JSON.
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// A file holding the input JSON.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// How long to wait, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print the call's trace id on stderr (`trace ID`), for `klf trace ID`.
        #[arg(long)]
        trace: bool,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Run a deployed function's own tests (its `static tests`) in a real instance; exits non-zero
    /// when any fails.
    Test {
        target: String,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Remove a function (NAME) or one version (NAME@VERSION).
    Rm {
        target: String,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Invocation statistics of the whole mesh per function@version (optionally of NAME).
    Stats {
        name: Option<String>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Yank NAME@VERSION on every node: resolving a dependency skips it from now on (what runs it
    /// keeps running; `klf fn audit` names those functions).
    Yank {
        /// NAME@VERSION, an exact published version.
        target: String,
        /// Why, shown by `klf fn info`, `klf fn audit` and in refused deploys.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Deployed functions whose calls to a dependency still reach a yanked version.
    Audit {
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Serve VERSION (a published version) of NAME until the next deploy.
    Rollback {
        name: String,
        version: String,
        #[command(flatten)]
        client: ClientOptions,
    },
}

/// `--perf`: what an over-budget performance test does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerfArg {
    Fail,
    Warn,
    Off,
}

impl From<PerfArg> for PerfModeBody {
    fn from(arg: PerfArg) -> Self {
        match arg {
            PerfArg::Fail => Self::Fail,
            PerfArg::Warn => Self::Warn,
            PerfArg::Off => Self::Off,
        }
    }
}

/// Runs one `klf fn` command.
pub async fn run(command: FnCommand) -> anyhow::Result<()> {
    match command {
        FnCommand::Stats { name, client } => return crate::stats::stats(name, client).await,
        FnCommand::Rollback {
            name,
            version,
            client,
        } => return crate::stats::rollback(name, version, client).await,
        FnCommand::Deploy {
            dir,
            replicas,
            perf,
            perf_runs,
            latency_budget_ms,
            client,
        } => {
            // Validate locally first: errors then name the real files.
            let package = Package::load(&dir)?;
            let package_body = PackageBody {
                manifest: package.manifest_text.clone(),
                source: package.source.clone(),
                examples: std::fs::read_dir(dir.join("examples"))
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| {
                        let name = e.path().file_stem()?.to_string_lossy().into_owned();
                        Some((name, std::fs::read_to_string(e.path()).ok()?))
                    })
                    .collect(),
                input_schema: package.input_schema.clone(),
                output_schema: package.output_schema.clone(),
            };
            let request = DeployRequest {
                package: package_body,
                replicas,
                perf: PerfSettings {
                    perf: Some(perf.into()),
                    perf_runs: Some(perf_runs),
                    latency_budget_ms,
                },
            };
            // The performance test runs every example `perf_runs` times before the answer.
            let api = ApiClient::from_options(&client)?
                .with_timeout(std::time::Duration::from_secs(10 * 60));
            let deployed: Deployed = api
                .post_json("/v1/functions", &request)
                .await
                .with_context(|| format!("deploying {}", package.manifest.id()))?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&deployed)?);
            } else {
                println!(
                    "deployed {} with {replicas} replica(s); artifact {} ({} bytes)",
                    deployed.release.id, deployed.release.artifact, deployed.release.artifact_len
                );
                if let Some(perf) = &deployed.perf {
                    println!("  performance    {}", perf_line(perf));
                }
                for warning in &deployed.warnings {
                    println!("  {warning}");
                }
            }
        }
        FnCommand::Ls { kind, client } => {
            let api = ApiClient::from_options(&client)?;
            let path = match &kind {
                Some(k) => format!("/v1/functions?type={}", urlencode(k)),
                None => "/v1/functions".to_string(),
            };
            let functions: Vec<FunctionSummary> = api.get_json(&path).await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&functions)?);
                return Ok(());
            }
            let width = functions
                .iter()
                .map(|f| f.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:width$}  {:10}  {:8}  {:18}  DESCRIPTION",
                "NAME", "LATEST", "REPLICAS", "TYPE"
            );
            for f in functions {
                println!(
                    "{:width$}  {:10}  {:8}  {:18}  {}",
                    f.name, f.latest, f.replicas, f.kind, f.description
                );
            }
        }
        FnCommand::Info { target, client } => {
            let api = ApiClient::from_options(&client)?;
            let info: FunctionInfo = api
                .get_json(&format!("/v1/functions/{}", urlencode(&target)))
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(());
            }
            print_info(&info);
        }
        FnCommand::Deps { target, client } => {
            let api = ApiClient::from_options(&client)?;
            let deps: Vec<ReleaseView> = api
                .get_json(&format!(
                    "/v1/functions/{}/dependencies",
                    urlencode(&target)
                ))
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&deps)?);
            } else if deps.is_empty() {
                println!("{target} has no dependencies");
            } else {
                for d in deps {
                    println!("{}", d.id);
                }
            }
        }
        FnCommand::Invoke {
            target,
            input,
            input_file,
            timeout_ms,
            trace,
            client,
        } => {
            let text = match (input, input_file) {
                (Some(text), _) => text,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => "{}".to_string(),
            };
            let input: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("the input is not JSON: {e}"))?;
            let api = ApiClient::from_options(&client)?.with_timeout(
                std::time::Duration::from_millis(timeout_ms) + std::time::Duration::from_secs(5),
            );
            let path = format!(
                "/v1/functions/{}/invoke?timeout_ms={timeout_ms}",
                urlencode(&target)
            );
            let (output, trace_id) = api.post_json_traced::<Value>(&path, &input).await;
            if trace {
                match trace_id {
                    Some(id) => eprintln!("trace {id}"),
                    None => eprintln!("trace: the node sent no trace id"),
                }
            }
            println!("{}", serde_json::to_string(&output?)?);
        }
        FnCommand::Test { target, client } => {
            let api = ApiClient::from_options(&client)?
                .with_timeout(std::time::Duration::from_secs(6 * 60));
            let run: TestRun = api
                .post_json(
                    &format!("/v1/functions/{}/test", urlencode(&target)),
                    &serde_json::json!({}),
                )
                .await?;
            let failed = run.failed;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                print_test_run(&run);
            }
            if failed > 0 {
                anyhow::bail!("{failed} test(s) of {target} failed");
            }
        }
        FnCommand::Yank {
            target,
            reason,
            client,
        } => {
            let Some((name, version)) = target.split_once('@') else {
                anyhow::bail!("give the version to yank as NAME@VERSION, such as {target}@1.0.0");
            };
            let api = ApiClient::from_options(&client)?;
            let yank: YankView = api
                .post_json(
                    &format!(
                        "/v1/functions/{}/versions/{}/yank",
                        urlencode(name),
                        urlencode(version)
                    ),
                    &YankRequest { reason },
                )
                .await
                .with_context(|| format!("yanking {target}"))?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&yank)?);
            } else {
                println!("yanked {}: {}", yank.id, yank.reason);
            }
        }
        FnCommand::Audit { client } => {
            let api = ApiClient::from_options(&client)?;
            let entries: Vec<AuditEntry> = api.get_json("/v1/audit/dependencies").await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                println!("no deployed function reaches a yanked version");
            } else {
                for e in entries {
                    println!(
                        "{} -> {} (needs {} {}): yanked: {}; {}",
                        e.function,
                        e.resolves_to,
                        e.dependency,
                        e.range,
                        e.reason,
                        match &e.replacement {
                            Some(r) => format!("a new deploy resolves to {r}"),
                            None => "no other version matches".into(),
                        }
                    );
                }
            }
        }
        FnCommand::Rm { target, client } => {
            let api = ApiClient::from_options(&client)?;
            let removed: Removed = api
                .delete_json(&format!("/v1/functions/{}", urlencode(&target)))
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!("removed {target}");
            }
        }
    }
    Ok(())
}

/// The human view of `klf fn info`.
fn print_info(info: &FunctionInfo) {
    let r = &info.release;
    println!("{}  ({})", r.id, r.kind);
    let lines = [
        ("description", shown(&r.description)),
        ("versions", shown(&info.versions)),
        ("replicas", shown(&info.replicas)),
        ("idempotent", shown(&r.idempotent)),
        ("capabilities", shown(&r.capabilities)),
        ("dependencies", shown(&r.dependencies)),
        ("limits", shown(&r.limits)),
        ("config", shown(&r.config)),
        ("value per call", shown(&r.value_per_call)),
        ("artifact", shown(&r.artifact)),
        ("signer", shown(&r.signer)),
        ("owner", shown(&r.owner)),
        ("examples", shown(&info.examples)),
    ];
    for (label, value) in lines {
        println!("  {label:14} {value}");
    }
    if let Some(perf) = &info.perf {
        println!("  {:14} {}", "performance", perf_line(perf));
        for over in &perf.over_budget {
            println!("  {:14} over budget: {over}", "");
        }
    }
    if let Some(yank) = &info.yanked {
        println!("  {:14} {} (by {})", "YANKED", yank.reason, yank.by);
    }
    for (version, yank) in &info.yanked_versions {
        if Some(yank.id.as_str()) != info.yanked.as_ref().map(|y| y.id.as_str()) {
            println!("  {:14} {version}: {}", "yanked", yank.reason);
        }
    }
}

/// The performance figures on one line.
fn perf_line(perf: &PerfView) -> String {
    let load: Vec<String> = perf
        .load
        .iter()
        .map(|s| format!("{}: {:.0}", s.in_flight, s.calls_per_sec))
        .collect();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms over {} run(s){}; peak heap {:.1} MiB; largest output {} B; \
         calls/s by calls in flight {}",
        perf.p50_ms,
        perf.p99_ms,
        perf.runs,
        perf.latency_budget_ms
            .map(|b| format!(" (budget {b} ms)"))
            .unwrap_or_default(),
        perf.peak_memory_bytes as f64 / f64::from(1 << 20),
        perf.max_output_bytes,
        if load.is_empty() {
            "-".to_string()
        } else {
            load.join(", ")
        }
    )
}

/// A field as `compact` shows JSON: strings bare, the rest as JSON text.
fn shown(value: &impl Serialize) -> String {
    serde_json::to_value(value).map_or_else(|e| format!("? ({e})"), |v| compact(&v))
}

/// The human view of `klf fn test`: the counts, then each failed case with what differed.
fn print_test_run(run: &TestRun) {
    println!(
        "{}: {} passed, {} failed (on node {}{})",
        run.function,
        run.passed,
        run.failed,
        run.node,
        if run.hosted {
            ", hosted instance"
        } else {
            ", throwaway instance"
        }
    );
    for result in &run.results {
        // A case in another shape than `BaseFunction.test()` reports is shown whole.
        let case = match serde_json::from_value::<TestCaseResult>(result.clone()) {
            Ok(case) => case,
            Err(_) => {
                println!("  FAILED ? {}", compact(result));
                continue;
            }
        };
        if case.passed {
            continue;
        }
        println!("  FAILED {}", case.name);
        for (key, value) in [
            ("expected", &case.expected),
            ("actual", &case.actual),
            ("error", &case.error),
        ] {
            if let Some(value) = value.as_ref().filter(|v| !v.is_null()) {
                println!("    {key}: {}", compact(value));
            }
        }
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment (names are plain; ranges may hold `^`, `>`, `<`, `=`, spaces).
pub(crate) fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'@' | b'*' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
