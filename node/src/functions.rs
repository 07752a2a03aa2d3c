//! `klf fn …`: deploy, list, inspect and remove functions through a node's API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use klf_actors::functions::package::Package;
use serde_json::Value;

use crate::api::functions::{FunctionSummary, PackageBody};
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
            let body = PackageBody {
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
            let mut request = serde_json::to_value(&body)?;
            request["replicas"] = replicas.into();
            let api = ApiClient::from_options(&client)?;
            let deployed: Value = api
                .post_json("/v1/functions", &request)
                .await
                .with_context(|| format!("deploying {}", package.manifest.id()))?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&deployed)?);
            } else {
                println!(
                    "deployed {} with {replicas} replica(s); artifact {} ({} bytes)",
                    deployed["id"].as_str().unwrap_or_default(),
                    deployed["artifact"].as_str().unwrap_or_default(),
                    deployed["artifact_len"]
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
            let info: Value = api
                .get_json(&format!("/v1/functions/{}", urlencode(&target)))
                .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(());
            }
            println!(
                "{}  ({})",
                info["id"].as_str().unwrap_or_default(),
                info["type"].as_str().unwrap_or_default()
            );
            for (label, key) in [
                ("description", "description"),
                ("versions", "versions"),
                ("replicas", "replicas"),
                ("idempotent", "idempotent"),
                ("capabilities", "capabilities"),
                ("dependencies", "dependencies"),
                ("limits", "limits"),
                ("config", "config"),
                ("value per call", "value_per_call"),
                ("artifact", "artifact"),
                ("signer", "signer"),
                ("owner", "owner"),
                ("examples", "examples"),
            ] {
                println!("  {label:14} {}", compact(&info[key]));
            }
        }
        FnCommand::Deps { target, client } => {
            let api = ApiClient::from_options(&client)?;
            let deps: Vec<Value> = api
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
                    println!("{}", d["id"].as_str().unwrap_or_default());
                }
            }
        }
        FnCommand::Invoke {
            target,
            input,
            input_file,
            timeout_ms,
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
            let output: Value = api
                .post_json(
                    &format!(
                        "/v1/functions/{}/invoke?timeout_ms={timeout_ms}",
                        urlencode(&target)
                    ),
                    &input,
                )
                .await?;
            println!("{}", serde_json::to_string(&output)?);
        }
        FnCommand::Test { target, client } => {
            let api = ApiClient::from_options(&client)?
                .with_timeout(std::time::Duration::from_secs(6 * 60));
            let run: Value = api
                .post_json(
                    &format!("/v1/functions/{}/test", urlencode(&target)),
                    &serde_json::json!({}),
                )
                .await?;
            let failed = run["failed"].as_u64().unwrap_or(0);
            if client.json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                println!(
                    "{}: {} passed, {failed} failed (on node {}{})",
                    run["function"].as_str().unwrap_or_default(),
                    run["passed"].as_u64().unwrap_or(0),
                    run["node"].as_str().unwrap_or_default(),
                    if run["hosted"].as_bool() == Some(true) {
                        ", hosted instance"
                    } else {
                        ", throwaway instance"
                    }
                );
                for result in run["results"].as_array().into_iter().flatten() {
                    if result["passed"].as_bool() == Some(true) {
                        continue;
                    }
                    println!("  FAILED {}", result["name"].as_str().unwrap_or("?"));
                    for key in ["expected", "actual", "error"] {
                        if !result[key].is_null() {
                            println!("    {key}: {}", compact(&result[key]));
                        }
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} test(s) of {target} failed");
            }
        }
        FnCommand::Rm { target, client } => {
            let api = ApiClient::from_options(&client)?;
            let removed: Value = api
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
