//! `klf fn …`: deploy, list, inspect and remove functions through a node's API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use klf_actors::functions::package::Package;
use klf_actors::router::test_run::TestRun;
use serde::Serialize;
use serde_json::Value;

use crate::api::types::{
    DeployRequest, Deployed, FunctionInfo, FunctionSummary, PackageBody, ReleaseView, Removed,
    TestCaseResult,
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
    /// Serve VERSION (a published version) of NAME until the next deploy.
    Rollback {
        name: String,
        version: String,
        #[command(flatten)]
        client: ClientOptions,
    },
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
            };
            let api = ApiClient::from_options(&client)?;
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
