//! `klf ingredients …`: list, show and render ingredients. With a node (`--data`, `--api`, or
//! `KLF_DATA`/`KLF_API`) the node's own ingredients are used (including its `--ingredients`
//! folders); without one, the shipped ingredients plus any `--ingredients DIR` given here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use klf_actors::ingredients::render::render;
use klf_actors::ingredients::{Library, RenderRequest, RenderedPackage};
use serde_json::Value;

use crate::api::ingredients::{detail, listing, parse_kind};
use crate::api::types::{IngredientDetail, IngredientListing, RenderRecipeRequest};
use crate::client::{ApiClient, ClientOptions};

#[derive(Debug, Subcommand)]
pub enum IngredientsCommand {
    /// List ingredients (and the files that failed to load).
    Ls {
        /// Only this kind: model, data-flow, api, security, testing, recipe.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        source: Source,
    },
    /// Show one ingredient in full.
    Show {
        name: String,
        #[command(flatten)]
        source: Source,
    },
    /// Render a recipe into a package folder that `klf fn deploy` takes.
    Render {
        recipe: String,
        /// The folder to write (created; existing files of the same names are replaced).
        #[arg(long)]
        out: PathBuf,
        /// A parameter value, KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The package's name (default: the recipe's).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        source: Source,
    },
}

/// Where ingredients come from.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// An extra ingredient folder (repeatable; without a node only).
    #[arg(long = "ingredients", value_name = "DIR")]
    pub folders: Vec<PathBuf>,
    #[command(flatten)]
    pub client: ClientOptions,
}

impl Source {
    fn node(&self) -> anyhow::Result<Option<ApiClient>> {
        if self.client.data.is_none() && self.client.api.is_none() {
            return Ok(None);
        }
        if !self.folders.is_empty() {
            bail!(
                "--ingredients only applies without a node; start the node with `klf up --ingredients DIR` instead"
            );
        }
        Ok(Some(ApiClient::from_options(&self.client)?))
    }
}

/// Runs one `klf ingredients` command.
pub async fn run(command: IngredientsCommand) -> anyhow::Result<()> {
    match command {
        IngredientsCommand::Ls { kind, source } => {
            let kind = kind
                .as_deref()
                .map(parse_kind)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let listed: IngredientListing = match source.node()? {
                Some(api) => {
                    let path = match kind {
                        Some(k) => format!("/v1/ingredients?kind={k}"),
                        None => "/v1/ingredients".into(),
                    };
                    api.get_json(&path).await?
                }
                None => listing(&Library::load(&source.folders), kind),
            };
            if source.client.json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            print_listing(&listed);
        }
        IngredientsCommand::Show { name, source } => {
            let shown: IngredientDetail = match source.node()? {
                Some(api) => api.get_json(&format!("/v1/ingredients/{name}")).await?,
                None => detail(Library::load(&source.folders).find(&name)?),
            };
            if source.client.json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_detail(&shown)?;
            }
        }
        IngredientsCommand::Render {
            recipe,
            out,
            set,
            name,
            source,
        } => {
            let mut values = BTreeMap::new();
            for pair in &set {
                let Some((key, value)) = pair.split_once('=') else {
                    bail!("--set {pair:?}: expected KEY=VALUE");
                };
                values.insert(key.trim().to_string(), Value::String(value.to_string()));
            }
            let rendered: RenderedPackage = match source.node()? {
                Some(api) => {
                    api.post_json(
                        &format!("/v1/ingredients/{recipe}/render"),
                        &RenderRecipeRequest { name, set: values },
                    )
                    .await?
                }
                None => render(
                    &Library::load(&source.folders),
                    &RenderRequest {
                        recipe: recipe.clone(),
                        name,
                        set: values,
                    },
                )?,
            };
            rendered
                .write_to(&out)
                .with_context(|| format!("writing the package to {}", out.display()))?;
            if source.client.json {
                println!("{}", serde_json::to_string_pretty(&rendered)?);
                return Ok(());
            }
            println!(
                "rendered {} {}@{} from recipe {} into {}",
                rendered.files.len(),
                rendered.name,
                rendered.version,
                rendered.recipe,
                out.display()
            );
            for path in rendered.files.keys() {
                println!("  {path}");
            }
            for secret in rendered.fixtures.secrets.keys() {
                println!(
                    "its tests need the secret {secret:?} on the nodes that run them: <data>/secrets/{secret} (see `klf ingredients show {}`)",
                    rendered.recipe
                );
            }
            println!("deploy it with: klf fn deploy {}", out.display());
        }
    }
    Ok(())
}

fn print_listing(listed: &IngredientListing) {
    let width = listed
        .ingredients
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:9}  {:7}  DESCRIPTION",
        "NAME", "KIND", "SOURCE"
    );
    for i in &listed.ingredients {
        let overrides = i
            .overrides
            .as_ref()
            .map(|f| format!(" (overrides {f})"))
            .unwrap_or_default();
        println!(
            "{:width$}  {:9}  {:7}  {}{overrides}",
            i.name, i.kind, i.source, i.description
        );
    }
    if !listed.errors.is_empty() {
        println!();
        println!("{} file(s) did not load:", listed.errors.len());
        for e in &listed.errors {
            println!("  {}", e.text);
        }
    }
}

fn print_detail(shown: &IngredientDetail) -> anyhow::Result<()> {
    let s = &shown.summary;
    println!("{}  ({}, {})", s.name, s.kind, s.source);
    println!("  file         {}", s.file);
    if let Some(over) = &s.overrides {
        println!("  overrides    {over}");
    }
    println!("  description  {}", s.description);
    // The content is kind-specific (see docs/ingredients.md): shown as JSON, templates by name.
    let mut content = shown.content.clone();
    if let Some(map) = content.as_object_mut() {
        map.remove("name");
        map.remove("description");
        // Templates are long: list them by name.
        if let Some(Value::Object(templates)) = map.remove("templates") {
            map.insert(
                "templates".into(),
                Value::Array(templates.keys().cloned().map(Value::String).collect()),
            );
        }
    }
    println!("{}", serde_json::to_string_pretty(&content)?);
    Ok(())
}
