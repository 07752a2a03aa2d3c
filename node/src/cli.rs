//! The command line: node commands (`init`, `up`) and client commands that talk to a node's API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use klf_actors::mesh::MemberView;
use klf_actors::node::{DataDir, init_mesh};

use crate::api::types::{JoinToken, JoinTokenRequest, SecretSet, SecretValue};
use crate::client::{ApiClient, ClientOptions};
use crate::telemetry::LogFormat;

/// KLF mesh: a secure mesh of nodes that host, route and generate functions.
#[derive(Debug, Parser)]
#[command(name = "klf", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new mesh: its CA, this node's identity and an admin API token.
    Init {
        /// Data directory of the node (created).
        #[arg(long)]
        data: PathBuf,
        /// This node's name.
        #[arg(long)]
        name: String,
        /// A human name for the mesh.
        #[arg(long, default_value = "klf")]
        mesh: String,
    },
    /// Run a node (joining a mesh first when given a token).
    Up(crate::up::UpArgs),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Functions: deploy, list, inspect, remove.
    #[command(subcommand, name = "fn")]
    Fn(crate::functions::FnCommand),
    /// Ingredients: model configurations, data-flow, API, security and testing templates, recipes.
    #[command(subcommand)]
    Ingredients(crate::ingredients::IngredientsCommand),
    /// Turn a plain-language request into a validated, tested (and deployed) function.
    Chef(crate::chef::ChefArgs),
    /// Three local nodes; the Chef builds, deploys and serves the market-analysis function.
    Demo,
    /// Cost, value and ROI of a function (NAME) or of the whole mesh.
    Roi(crate::roi::RoiArgs),
    /// Secrets functions read with `ctx.secret`, stored on every node.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// A trace's waterfall across the mesh (TRACE_ID), or the most recent traces (--recent).
    Trace(crate::traces::TraceArgs),
    /// Show the mesh's members and their state.
    Members {
        #[command(flatten)]
        client: ClientOptions,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store secret NAME on every alive node, from a file or (without --from-file) stdin. A
    /// trailing newline is part of the file but not of the secret `ctx.secret` returns.
    Set {
        /// 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOptions,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a one-time join token (the last line of stdout).
    Create {
        /// How long the token stays valid (for example 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        client: ClientOptions,
    },
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { data, name, mesh } => {
            let dir = DataDir::new(&data);
            let settings = init_mesh(&dir, &name, &mesh)?;
            println!(
                "created mesh {} ({}) with node {} ({}) in {}",
                settings.mesh_name,
                settings.mesh_id,
                settings.name,
                settings.node_id,
                data.display()
            );
            println!("run it with: klf up --data {}", data.display());
            Ok(())
        }
        Command::Up(args) => crate::up::run(args, cli.log_format).await,
        Command::Token(TokenCommand::Create { ttl, client }) => token_create(ttl, client).await,
        Command::Members { client } => members(client).await,
        Command::Demo => crate::demo::run().await,
        Command::Fn(command) => crate::functions::run(command).await,
        Command::Ingredients(command) => crate::ingredients::run(command).await,
        Command::Roi(args) => crate::roi::run(args).await,
        Command::Trace(args) => crate::traces::run(args).await,
        Command::Chef(args) => crate::chef::run(args).await,
        Command::Secret(SecretCommand::Set {
            name,
            from_file,
            client,
        }) => secret_set(&name, from_file.as_deref(), client).await,
    }
}

async fn secret_set(
    name: &str,
    from_file: Option<&std::path::Path>,
    options: ClientOptions,
) -> anyhow::Result<()> {
    let value = match from_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secret from {}", path.display()))?,
        None => std::io::read_to_string(std::io::stdin())
            .context("cannot read the secret from stdin")?,
    };
    let client = ApiClient::from_options(&options)?;
    let set: SecretSet = client
        .put_json(
            &format!("/v1/secrets/{name}"),
            &SecretValue {
                value: value.trim_end_matches(['\n', '\r']).to_string(),
            },
        )
        .await?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&set)?);
    } else {
        println!("secret {} stored on {}", set.name, set.nodes.join(", "));
    }
    Ok(())
}

async fn token_create(ttl: Duration, options: ClientOptions) -> anyhow::Result<()> {
    let client = ApiClient::from_options(&options)?;
    let created: JoinToken = client
        .post_json(
            "/v1/join-tokens",
            &JoinTokenRequest {
                ttl_secs: ttl.as_secs(),
            },
        )
        .await
        .context("creating a join token")?;
    if options.json {
        println!("{}", serde_json::to_string(&created)?);
        return Ok(());
    }
    println!(
        "one-time join token for mesh {}, redeemed at {}, valid for {}:",
        created.mesh_id,
        created.seed,
        humantime::format_duration(ttl)
    );
    println!(
        "  klf up --data DIR --name NAME --listen ADDR:PORT --api ADDR:PORT --join <token below>"
    );
    println!("{}", created.token);
    Ok(())
}

async fn members(options: ClientOptions) -> anyhow::Result<()> {
    let client = ApiClient::from_options(&options)?;
    let members: Vec<MemberView> = client.get_json("/v1/members").await?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    let width = members
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:16}  {:7}  {:21}  API",
        "NAME", "ID", "STATE", "ADDR"
    );
    for m in members {
        let marker = if m.is_self { " (this node)" } else { "" };
        println!(
            "{:width$}  {:16}  {:7}  {:21}  {}{marker}",
            m.name,
            m.id,
            m.state.to_string(),
            m.addr,
            m.api
        );
    }
    Ok(())
}
