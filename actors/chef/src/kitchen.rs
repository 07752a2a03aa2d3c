//! The Kitchen: what the Chef's layer keeps on a node beside the Chef itself — the Ingredients it
//! cooks from, the ledger of what building and keeping functions cost (and the rates that price
//! it), and the Monitor that rolls back a deployed version that misbehaves.
//!
//! A [`Node`] knows nothing of these; the Kitchen is started on top of one and reaches it only
//! through the node's public API (publish, invoke, stats, pin), so the layering stays one way.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use klf_node_core::{Node, NodeError};
use klf_registry::Deployment;
use klf_router::FunctionStats;
use ractor::{Actor, ActorRef};

use crate::ingredients::Library;
use crate::ledger::{EventKind, Ledger, LedgerError, MaintenanceEvent, Rates, RatesError};
use crate::monitor::{
    Deployed, Monitor, MonitorArgs, MonitorConfig, MonitorEvent, MonitorMsg, Watched,
};

/// What a Kitchen is started with (what `klf up` takes beside the node's own options).
#[derive(Debug, Clone, Default)]
pub struct KitchenOptions {
    /// User ingredient folders (`klf up --ingredients DIR`), loaded after the shipped ones and
    /// `<data>/ingredients`; later folders override earlier ones.
    pub ingredient_dirs: Vec<std::path::PathBuf>,
    /// The Monitor's thresholds (rollback of misbehaving versions).
    pub monitor: MonitorConfig,
}

/// Why the Kitchen could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum KitchenError {
    /// `<data>/roi.toml` is malformed (the message names the file and the field).
    #[error(transparent)]
    Rates(#[from] RatesError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("the monitor {what}: {source}")]
    Monitor {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The Chef layer's services on one node.
pub struct Kitchen {
    node: Arc<Node>,
    ingredients: Arc<Library>,
    ledger: Ledger,
    rates: Rates,
    monitor: ActorRef<MonitorMsg>,
}

/// The Monitor's view of a node: deployed functions from its catalog, mesh stats over KLF, and
/// rollbacks that are also maintenance events in the ledger.
struct NodeWatch {
    node: Arc<Node>,
    ledger: Ledger,
}

impl Kitchen {
    /// Loads the ingredients (shipped, `<data>/ingredients`, then `options.ingredient_dirs`) and
    /// the rates (`<data>/roi.toml`), opens the ledger in the node's store and starts the Monitor.
    pub async fn start(
        node: Arc<Node>,
        options: KitchenOptions,
    ) -> Result<Arc<Self>, KitchenError> {
        let dir = node.data_dir();
        let mut ingredient_dirs = Vec::new();
        if dir.ingredients_dir().is_dir() {
            ingredient_dirs.push(dir.ingredients_dir());
        }
        ingredient_dirs.extend(options.ingredient_dirs.iter().cloned());
        let ingredients = Arc::new(Library::load(&ingredient_dirs));
        let rates = Rates::load(dir.root())?;
        let store = node.store().ok_or(LedgerError::Closed)?;
        let ledger = Ledger::open(&store)?;
        drop(store);
        let (monitor, _) = Actor::spawn(
            None,
            Monitor,
            MonitorArgs {
                config: options.monitor.clone(),
                watched: Arc::new(NodeWatch {
                    node: node.clone(),
                    ledger: ledger.clone(),
                }),
            },
        )
        .await
        .map_err(|e| KitchenError::Monitor {
            what: "did not start",
            source: Box::new(e),
        })?;
        tracing::info!(
            ingredients = ingredients.len(),
            ingredient_errors = ingredients.errors().len(),
            "kitchen started"
        );
        Ok(Arc::new(Self {
            node,
            ingredients,
            ledger,
            rates,
            monitor,
        }))
    }

    /// The node this Kitchen runs on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The ingredients this node loaded (shipped, `<data>/ingredients`, `--ingredients`).
    pub fn ingredients(&self) -> &Arc<Library> {
        &self.ingredients
    }

    /// This node's ledger: the Chef records its runs here, the Monitor its rollbacks.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The prices ROI uses (`<data>/roi.toml`, read at start).
    pub fn rates(&self) -> &Rates {
        &self.rates
    }

    /// Pins the deployment of `name` to the published `version` (see [`Node::rollback`]) and
    /// records the rollback in the ledger as a maintenance event (ROI counts it as a cost).
    pub async fn rollback(
        &self,
        name: &str,
        version: semver::Version,
    ) -> Result<Deployment, NodeError> {
        rollback_and_record(&self.node, &self.ledger, name, version).await
    }

    /// The rollbacks this node's Monitor made.
    pub async fn monitor_events(&self) -> Result<Vec<MonitorEvent>, KitchenError> {
        self.monitor
            .call(MonitorMsg::Events, Some(Duration::from_secs(5)))
            .await
            .map_err(|e| KitchenError::Monitor {
                what: "stopped",
                source: Box::new(e),
            })?
            .success_or(())
            .map_err(|()| KitchenError::Monitor {
                what: "did not answer",
                source: "no answer within 5 s".into(),
            })
    }

    /// Stops the Monitor (the node itself is stopped by its owner).
    pub async fn stop(&self) {
        let _ = self
            .monitor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}

async fn rollback_and_record(
    node: &Node,
    ledger: &Ledger,
    name: &str,
    version: semver::Version,
) -> Result<Deployment, NodeError> {
    let event = MaintenanceEvent {
        kind: EventKind::Rollback,
        function: name.to_string(),
        version: Some(version.to_string()),
        at_unix_ms: klf_proto::unix_ms(),
        note: "deployment pinned to an earlier version".into(),
    };
    let pinned = node.rollback(name, version).await?;
    if let Err(error) = ledger.record_event(&event) {
        tracing::warn!(function = %event.function, %error, "a rollback is not in the ledger");
    }
    Ok(pinned)
}

impl Watched for NodeWatch {
    fn deployed(&self) -> Vec<Deployed> {
        let catalog = self.node.catalog();
        let alive = self.node.alive();
        let me = &self.node.settings().node_id;
        catalog
            .deployments()
            .filter(|d| d.enabled)
            .filter_map(|d| {
                let served = catalog.served(&d.name)?.manifest.version.clone();
                // One node acts per function: the first of its rendezvous ranking.
                let first = klf_router::placement::hosts(
                    &d.name,
                    alive.iter().map(|m| m.node_id.as_str()),
                    1,
                );
                Some(Deployed {
                    name: d.name.clone(),
                    served,
                    published: catalog
                        .versions(&d.name)
                        .iter()
                        .map(|r| r.manifest.version.clone())
                        .collect(),
                    responsible: first.first().is_some_and(|id| id == me),
                    canary: catalog
                        .canary(&d.name)
                        .map(|(canary, _)| canary.version.clone()),
                })
            })
            .collect()
    }

    fn mesh_stats(&self) -> BoxFuture<'static, Vec<FunctionStats>> {
        let node = self.node.clone();
        Box::pin(async move { node.mesh_function_stats().await })
    }

    fn end_canary(&self, name: String, promote: bool) -> BoxFuture<'static, Result<(), String>> {
        let node = self.node.clone();
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let canary = node
                .end_canary(&name, promote)
                .await
                .map_err(|e| e.to_string())?;
            // A canary that failed is a rollback: maintenance, counted as a cost in ROI.
            if !promote {
                let event = MaintenanceEvent {
                    kind: EventKind::Rollback,
                    function: name.clone(),
                    version: Some(canary.stable.to_string()),
                    at_unix_ms: klf_proto::unix_ms(),
                    note: format!("canary {} rolled back", canary.version),
                };
                if let Err(error) = ledger.record_event(&event) {
                    tracing::warn!(function = %name, %error, "a canary rollback is not in the ledger");
                }
            }
            Ok(())
        })
    }

    fn rollback(
        &self,
        name: String,
        version: semver::Version,
    ) -> BoxFuture<'static, Result<(), String>> {
        let node = self.node.clone();
        let ledger = self.ledger.clone();
        Box::pin(async move {
            rollback_and_record(&node, &ledger, &name, version)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
