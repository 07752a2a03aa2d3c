//! Watching and steering deployed functions: invocation statistics (this node's and the mesh's,
//! gathered over KLF), rollback to a published version, and the Monitor's view of the node.

use std::sync::Arc;
use std::time::Duration;

use klf_proto::{AgentMessage, ErrorCode, Frame};
use ractor::ActorRef;
use tokio::sync::watch;
use tracing::debug;

use super::{Node, NodeError};
use crate::chef::monitor::{Deployed, MonitorEvent, MonitorFuture, MonitorMsg, Watched};
use crate::ledger::{EventKind, Ledger, MaintenanceEvent};
use crate::mesh::membership::alive_members;
use crate::mesh::{MemberId, MembershipMsg, PeerAddr, TransportMsg};
use crate::registry::{Catalog, Deployment, RegistryMsg};
use crate::router::stats::{self, STATS_KIND, StatsSnapshot};
use crate::router::{FunctionStats, Router};

/// How long one peer may take to send its stats.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The parts of a node that stats, rollback and the Monitor need (cloneable, no `Node` borrow).
#[derive(Clone)]
pub(super) struct NodeOps {
    pub me: String,
    pub router: Router,
    pub registry: ActorRef<RegistryMsg>,
    pub membership: ActorRef<MembershipMsg>,
    pub transport: ActorRef<TransportMsg>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub alive: watch::Receiver<Arc<Vec<MemberId>>>,
    /// Rollbacks are maintenance events in the ledger (ROI counts them as a cost).
    pub ledger: Ledger,
}

/// The answer to a peer's `Frame::Agent` of kind `stats`: this node's snapshots as JSON.
pub(super) fn answer_stats(router: &Router, request: &AgentMessage) -> Frame {
    match serde_json::to_vec(&router.stats().snapshots()) {
        Ok(body) => Frame::Agent(AgentMessage {
            run_id: request.run_id.clone(),
            from_agent: STATS_KIND.into(),
            to_agent: request.from_agent.clone(),
            kind: STATS_KIND.into(),
            body,
        }),
        Err(e) => Frame::error(ErrorCode::Internal, format!("stats do not encode: {e}")),
    }
}

/// Asks one peer for its stats; `None` (logged) when it does not answer in time or garbles.
async fn peer_stats(
    transport: ActorRef<TransportMsg>,
    peer: MemberId,
) -> Option<Vec<StatsSnapshot>> {
    let frame = Frame::Agent(AgentMessage {
        run_id: String::new(),
        from_agent: STATS_KIND.into(),
        to_agent: STATS_KIND.into(),
        kind: STATS_KIND.into(),
        body: Vec::new(),
    });
    let to = PeerAddr {
        addr: peer.addr.clone(),
        node_id: Some(peer.node_id.clone()),
    };
    let answer = transport
        .call(
            |reply| TransportMsg::Request { to, frame, reply },
            Some(STATS_TIMEOUT),
        )
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(Ok(Frame::Agent(reply))))
            if reply.kind == STATS_KIND =>
        {
            match serde_json::from_slice(&reply.body) {
                Ok(snapshots) => Some(snapshots),
                Err(error) => {
                    debug!(node = %peer.name, %error, "stats from a peer do not decode");
                    None
                }
            }
        }
        Ok(ractor::rpc::CallResult::Success(Ok(other))) => {
            debug!(node = %peer.name, kind = other.kind_name(), "a peer answered stats with another frame");
            None
        }
        Ok(ractor::rpc::CallResult::Success(Err(error))) => {
            debug!(node = %peer.name, %error, "no stats from a peer");
            None
        }
        _ => {
            debug!(node = %peer.name, "no stats from a peer in time");
            None
        }
    }
}

impl NodeOps {
    fn function_stats(&self) -> Vec<FunctionStats> {
        self.router.stats().stats()
    }

    async fn mesh_function_stats(&self) -> Vec<FunctionStats> {
        let peers: Vec<MemberId> = alive_members(&self.membership)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.node_id != self.me)
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for peer in peers {
            asks.spawn(peer_stats(self.transport.clone(), peer));
        }
        let mut snapshots = self.router.stats().snapshots();
        while let Some(answer) = asks.join_next().await {
            if let Ok(Some(theirs)) = answer {
                snapshots.extend(theirs);
            }
        }
        stats::merge(snapshots)
    }

    async fn rollback(
        &self,
        name: &str,
        version: semver::Version,
    ) -> Result<Deployment, NodeError> {
        let event = MaintenanceEvent {
            kind: EventKind::Rollback,
            function: name.to_string(),
            version: Some(version.to_string()),
            at_unix_ms: super::now_millis(),
            note: "deployment pinned to an earlier version".into(),
        };
        let name = name.to_string();
        let pinned = self
            .registry
            .call(
                |reply| RegistryMsg::Pin {
                    name,
                    version,
                    reply,
                },
                Some(Duration::from_secs(15)),
            )
            .await
            .map_err(|e| NodeError::Actor(e.to_string()))?
            .success_or(())
            .map_err(|_| NodeError::Actor("the registry did not answer in time".into()))?
            .map_err(NodeError::Registry)?;
        if let Err(error) = self.ledger.record_event(&event) {
            tracing::warn!(function = %event.function, %error, "a rollback is not in the ledger");
        }
        Ok(pinned)
    }
}

impl Watched for NodeOps {
    fn deployed(&self) -> Vec<Deployed> {
        let catalog = self.catalog.borrow().clone();
        let alive = self.alive.borrow().clone();
        catalog
            .deployments()
            .filter(|d| d.enabled)
            .filter_map(|d| {
                let served = catalog.served(&d.name)?.manifest.version.clone();
                // One node acts per function: the first of its rendezvous ranking.
                let first =
                    crate::placement::hosts(&d.name, alive.iter().map(|m| m.node_id.as_str()), 1);
                Some(Deployed {
                    name: d.name.clone(),
                    served,
                    published: catalog
                        .versions(&d.name)
                        .iter()
                        .map(|r| r.manifest.version.clone())
                        .collect(),
                    responsible: first.first().is_some_and(|id| *id == self.me),
                })
            })
            .collect()
    }

    fn mesh_stats(&self) -> MonitorFuture<Vec<FunctionStats>> {
        let ops = self.clone();
        Box::pin(async move { ops.mesh_function_stats().await })
    }

    fn rollback(
        &self,
        name: String,
        version: semver::Version,
    ) -> MonitorFuture<Result<(), String>> {
        let ops = self.clone();
        Box::pin(async move {
            ops.rollback(&name, version)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

impl Node {
    /// What the calls served by this node did, per function@version.
    pub fn function_stats(&self) -> Vec<FunctionStats> {
        self.ops.function_stats()
    }

    /// The stats of every alive member (asked over KLF), merged per function@version. Members that
    /// do not answer within 2 s are left out.
    pub async fn mesh_function_stats(&self) -> Vec<FunctionStats> {
        self.ops.mesh_function_stats().await
    }

    /// Pins the deployment of `name` to the published `version` (replicated, last writer wins):
    /// the mesh serves it until the next deploy, which serves the highest version again. Refuses
    /// a version that is not published, or a function that is not deployed.
    pub async fn rollback(
        &self,
        name: &str,
        version: semver::Version,
    ) -> Result<Deployment, NodeError> {
        self.ops.rollback(name, version).await
    }

    /// The rollbacks this node's Monitor made.
    pub async fn monitor_events(&self) -> Result<Vec<MonitorEvent>, NodeError> {
        self.monitor
            .call(MonitorMsg::Events, Some(Duration::from_secs(5)))
            .await
            .map_err(|e| NodeError::Actor(e.to_string()))?
            .success_or(())
            .map_err(|_| NodeError::Actor("the monitor did not answer in time".into()))
    }
}
