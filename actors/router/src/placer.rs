//! The placer actor: keeps this node's instances in line with placement.
//!
//! Every tick (and whenever the catalog changes) it reads the alive members, publishes them to the
//! router, and for each enabled deployment ranks the alive nodes by rendezvous hashing: where this
//! node is among the top `replicas`, the served release is started here; where it no longer is,
//! the instance drains. While a function has a canary, the one node that serves it (the next in
//! the ranking) starts the canary's release instead. No leader: every node decides for itself from
//! the same view.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::Router;
use klf_mesh::membership::alive_members;
use klf_mesh::{MemberId, MembershipMsg};
use klf_registry::Catalog;

/// Arguments of the placer.
pub struct PlacerArgs {
    pub me: String,
    pub router: Router,
    pub membership: ActorRef<MembershipMsg>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub alive: watch::Sender<Arc<Vec<MemberId>>>,
    pub every: Duration,
}

pub enum PlacerMsg {
    Tick,
}

/// The placer actor.
pub struct Placer;

pub struct PlacerState {
    args: PlacerArgs,
    watcher: tokio::task::JoinHandle<()>,
}

impl Actor for Placer {
    type Msg = PlacerMsg;
    type State = PlacerState;
    type Arguments = PlacerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PlacerMsg>,
        args: PlacerArgs,
    ) -> Result<PlacerState, ActorProcessingErr> {
        myself.send_interval(args.every, || PlacerMsg::Tick);
        let mut changes = args.catalog.clone();
        let me = myself.clone();
        let watcher = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if me.cast(PlacerMsg::Tick).is_err() {
                    break;
                }
            }
        });
        let _ = myself.cast(PlacerMsg::Tick);
        Ok(PlacerState { args, watcher })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PlacerMsg>,
        state: &mut PlacerState,
    ) -> Result<(), ActorProcessingErr> {
        state.watcher.abort();
        state.args.router.instances().stop_all();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PlacerMsg>,
        PlacerMsg::Tick: PlacerMsg,
        state: &mut PlacerState,
    ) -> Result<(), ActorProcessingErr> {
        let args = &state.args;
        let Some(mut alive) = alive_members(&args.membership).await else {
            return Ok(());
        };
        alive.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        if **args.alive.borrow() != alive {
            let _ = args.alive.send(Arc::new(alive.clone()));
        }
        let catalog = args.catalog.borrow().clone();
        let ids: Vec<&str> = alive.iter().map(|m| m.node_id.as_str()).collect();
        let mut wanted = BTreeSet::new();
        for deployment in catalog.deployments().filter(|d| d.enabled) {
            let hosts = crate::placement::hosts(
                &deployment.name,
                ids.iter().copied(),
                deployment.replicas as usize,
            );
            // While a canary runs, its one host serves the canary's release instead.
            let canary = catalog.canary(&deployment.name).filter(|_| {
                crate::placement::canary_host(
                    &deployment.name,
                    ids.iter().copied(),
                    deployment.replicas as usize,
                ) == Some(args.me.as_str())
            });
            let release = match canary {
                Some((_, release)) => release.clone(),
                None if hosts.contains(&args.me.as_str()) => {
                    let Some(release) = catalog.served(&deployment.name).cloned() else {
                        continue;
                    };
                    release
                }
                None => continue,
            };
            wanted.insert(deployment.name.clone());
            let running = args.router.instances().get(&deployment.name);
            if running.is_some_and(|h| h.release.artifact == release.artifact) {
                continue;
            }
            let router = args.router.clone();
            tokio::spawn(async move {
                if let Err(error) = router.ensure_running(&release).await {
                    warn!(id = %release.manifest.id(), %error, "could not start an instance");
                }
            });
        }
        for hosted in args.router.instances().running() {
            let name = &hosted.release.manifest.name;
            if !wanted.contains(name) {
                debug!(id = %hosted.id(), "no longer placed here; draining");
                args.router.instances().retire(name);
            }
        }
        Ok(())
    }
}
