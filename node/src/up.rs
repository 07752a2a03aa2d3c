//! `klf up`: join a mesh if given a token, then run the node and its HTTP API until SIGTERM/Ctrl-C,
//! leaving the mesh gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use klf_actors::chef::kitchen::{Kitchen, KitchenOptions};
use klf_actors::functions::http::Cidr;
use klf_actors::model::ModelConfig;
use klf_actors::node::{DataDir, Node, RunOptions, join_mesh};
use klf_actors::router::MAX_INPUT_BYTES;
use tracing::info;

use crate::api::BodyLimits;

use crate::telemetry::LogFormat;
use klf_actors::router::trace_ring::DEFAULT_CAPACITY as DEFAULT_TRACE_BUFFER;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Data directory of the node.
    #[arg(long)]
    pub data: PathBuf,
    /// This node's name (needed to join; checked against the data dir on restart).
    #[arg(long)]
    pub name: Option<String>,
    /// UDP address for KLF (QUIC). Defaults to the last one used, else 127.0.0.1:7400.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TCP address for the HTTP API. Defaults to the last one used, else 127.0.0.1:7401.
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Address peers use to reach this node (HOST:PORT), when --listen binds every interface.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Join the mesh this token names (first start only).
    #[arg(long)]
    pub join: Option<String>,
    /// A folder of user ingredients (repeatable), loaded after the shipped ones and
    /// DATA/ingredients; an ingredient named like an earlier one overrides it.
    #[arg(long = "ingredients", value_name = "DIR")]
    pub ingredients: Vec<PathBuf>,
    /// Largest function input the API accepts, in bytes: the body of
    /// `POST /v1/functions/{NAME}/invoke` (and so of `klf fn invoke`); larger ones get 413
    /// `input_too_large`. At most 1048576 (1 MiB, the default): the router refuses larger inputs
    /// from any node, so the flag can lower the limit but not raise it. Other bodies (packages,
    /// Chef requests) have their own fixed limit of 16 MiB, the largest KLF frame.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_INPUT_BYTES, value_parser = parse_max_input)]
    pub max_input: usize,
    /// Spans of recent calls this node keeps for `klf trace` (about 390 bytes each: the default
    /// 4096 take about 1.6 MiB). 0 keeps none, and calls then build no spans unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[arg(long, value_name = "SPANS", default_value_t = DEFAULT_TRACE_BUFFER, env = "KLF_TRACE_BUFFER")]
    pub trace_buffer: usize,
    /// An address block functions may reach with ctx.http although it is loopback, private,
    /// link-local, multicast or cloud metadata (repeatable; for example 10.0.0.0/8 for private
    /// APIs, 127.0.0.1/32 for local test servers). Only the operator can open these: a manifest
    /// cannot. Also KLF_HTTP_ALLOW=CIDR,CIDR.
    #[arg(long = "http-allow", value_name = "CIDR", env = "KLF_HTTP_ALLOW", value_delimiter = ',', value_parser = parse_cidr)]
    pub http_allow: Vec<Cidr>,
}

/// `--http-allow`: a CIDR block (or one address).
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    Cidr::parse(text)
}

/// `--max-input`: a byte count from 1 to the router's [`MAX_INPUT_BYTES`].
fn parse_max_input(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a number of bytes: {e}"))?;
    if bytes == 0 || bytes > MAX_INPUT_BYTES {
        return Err(format!(
            "must be between 1 and {MAX_INPUT_BYTES} bytes: the router refuses inputs over {MAX_INPUT_BYTES} wherever they come from, so a higher API limit could not be honoured"
        ));
    }
    Ok(bytes)
}

fn saved_addr(saved: Option<&String>, default: &str) -> anyhow::Result<SocketAddr> {
    saved
        .map(String::as_str)
        .unwrap_or(default)
        .parse()
        .with_context(|| "the address saved in node.json is invalid; pass it explicitly")
}

pub async fn run(args: UpArgs, log_format: LogFormat) -> anyhow::Result<()> {
    crate::telemetry::init(log_format, args.trace_buffer)?;
    let dir = DataDir::new(&args.data);
    let saved = dir
        .is_initialized()
        .then(|| dir.load_settings())
        .transpose()?;
    let listen = match args.listen {
        Some(l) => l,
        None => saved_addr(
            saved.as_ref().and_then(|s| s.listen.as_ref()),
            "127.0.0.1:7400",
        )?,
    };
    let api_addr = match args.api {
        Some(a) => a,
        None => saved_addr(
            saved.as_ref().and_then(|s| s.api.as_ref()),
            "127.0.0.1:7401",
        )?,
    };
    // Bind the API first: its real address (port 0 allowed) is part of this node's identity.
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("cannot bind the API on {api_addr}"))?;
    let api_bound = api_listener.local_addr()?;
    let advertise = args
        .advertise
        .clone()
        .or_else(|| saved.as_ref().and_then(|s| s.advertise.clone()));

    match (&saved, &args.join) {
        (None, Some(token)) => {
            let Some(name) = &args.name else {
                bail!("--name is required to join a mesh");
            };
            if listen.port() == 0 {
                bail!("a joining node needs a fixed --listen port (peers learn it at join time)");
            }
            let advertise = match &advertise {
                Some(a) => a.clone(),
                None if listen.ip().is_unspecified() => bail!(
                    "--listen {listen} binds every interface; pass --advertise HOST:PORT so peers know where to reach this node"
                ),
                None => listen.to_string(),
            };
            let settings = join_mesh(&dir, token, name, &advertise, &api_bound.to_string())
                .await
                .context("cannot join the mesh")?;
            println!(
                "joined mesh {} ({}) as {} ({})",
                settings.mesh_name, settings.mesh_id, settings.name, settings.node_id
            );
        }
        (Some(_), Some(_)) => bail!(
            "{} already holds a node identity; omit --join to restart it",
            args.data.display()
        ),
        (Some(s), None) => {
            if let Some(name) = &args.name
                && name != &s.name
            {
                bail!(
                    "{} holds node {:?}, not {name:?}",
                    args.data.display(),
                    s.name
                );
            }
        }
        (None, None) => bail!(
            "{} holds no node: run `klf init --data {}` to create a mesh, or pass --join TOKEN to join one",
            args.data.display(),
            args.data.display()
        ),
    }

    let options = RunOptions {
        listen,
        api: shown_api(api_bound, advertise.as_deref()),
        local_api: Some(api_bound.to_string()),
        advertise,
        model: ModelConfig::from_env(),
        http_allow: args.http_allow.clone(),
        ..RunOptions::loopback()
    };
    if !options.http_allow.is_empty() {
        let blocks: Vec<String> = options.http_allow.iter().map(ToString::to_string).collect();
        info!(allow = %blocks.join(","), "ctx.http may reach these non-public address blocks");
    }
    match &options.model {
        Some(model) => {
            info!(model = %model.model, base_url = %model.base_url, "ctx.model provider")
        }
        None => info!(
            "no model provider configured (KLF_MODEL_BASE_URL unset): ctx.model is unavailable"
        ),
    }
    let node = Arc::new(Node::start(&dir, options).await?);
    let settings = node.settings();
    println!(
        "node {} ({}) of mesh {} ({}): klf on {}, api on http://{}",
        settings.name,
        settings.node_id,
        settings.mesh_name,
        settings.mesh_id,
        node.local_addr(),
        api_bound
    );
    let kitchen = Kitchen::start(
        node.clone(),
        KitchenOptions {
            ingredient_dirs: args.ingredients.clone(),
            ..KitchenOptions::default()
        },
    )
    .await
    .context("cannot start the kitchen (ingredients, ledger, monitor)")?;
    let (providers, recording, problems) = klf_actors::chef::providers::node_providers_recorded();
    for problem in &problems {
        tracing::warn!("chef provider not available: {problem}");
    }
    let chef = klf_actors::chef::Chef::start(kitchen.clone(), providers)
        .await
        .context("cannot start the chef")?;
    if let Some((recording, file)) = recording {
        info!(file = %file.display(), "recording the openai provider's exchanges (KLF_CHEF_RECORD)");
        chef.set_after_run(Box::new(move |_| {
            if let Err(e) = recording.save(&file) {
                tracing::warn!("cannot save the recording to {}: {e}", file.display());
            }
        }));
    }
    info!(providers = ?chef.providers(), "chef ready");
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::api::serve(
        api_listener,
        node.clone(),
        kitchen.clone(),
        Some(chef.clone()),
        BodyLimits {
            max_input: args.max_input,
        },
        async {
            let _ = api_stopped.await;
        },
    ));
    shutdown_signal().await;
    info!("shutting down: leaving the mesh");
    chef.stop();
    kitchen.stop().await;
    node.shutdown().await;
    let _ = stop_api.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    Ok(())
}

/// The API address peers and `klf members` show: the bound one, unless it binds every interface;
/// then the advertised host with the API port (what a peer can actually reach).
fn shown_api(bound: SocketAddr, advertise: Option<&str>) -> String {
    match advertise.and_then(|a| a.rsplit_once(':')) {
        Some((host, _)) if bound.ip().is_unspecified() => format!("{host}:{}", bound.port()),
        _ => bound.to_string(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_api_is_shown_at_the_advertised_host() {
        let wildcard: SocketAddr = "0.0.0.0:7401".parse().unwrap_or_else(|e| panic!("{e}"));
        let specific: SocketAddr = "10.0.0.5:7401".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shown_api(wildcard, Some("n1:7400")), "n1:7401");
        assert_eq!(shown_api(wildcard, None), "0.0.0.0:7401");
        assert_eq!(shown_api(specific, Some("n1:7400")), "10.0.0.5:7401");
    }

    #[test]
    fn max_input_is_a_byte_count_up_to_the_routers_limit() {
        assert_eq!(parse_max_input("1000"), Ok(1000));
        assert_eq!(parse_max_input("1048576"), Ok(MAX_INPUT_BYTES));
        for bad in ["0", "1048577", "3000000", "1MiB", "-1"] {
            let refused = parse_max_input(bad);
            assert!(refused.is_err(), "{bad}: {refused:?}");
        }
        let over = parse_max_input("2000000").err().unwrap_or_default();
        assert!(
            over.contains("1048576") && over.contains("router"),
            "{over}"
        );
    }
}
