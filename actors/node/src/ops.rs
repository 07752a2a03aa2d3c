//! Watching and steering deployed functions: invocation statistics (this node's and the mesh's,
//! gathered over KLF) and rollback to a published version.

use std::sync::Arc;
use std::time::Duration;

use klf_proto::{AgentMessage, ErrorCode, Frame};
use ractor::ActorRef;
use tokio::sync::watch;
use tracing::debug;

use super::{Node, NodeError};
use klf_mesh::membership::alive_members;
use klf_mesh::{MemberId, MembershipMsg, PeerAddr, TransportMsg};
use klf_registry::{Deployment, RegistryMsg};
use klf_router::stats::{self, STATS_KIND, StatsSnapshot};
use klf_router::{FunctionStats, Router};

/// How long one peer may take to send its stats.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The parts of a node that stats and rollback need (cloneable, no `Node` borrow).
#[derive(Clone)]
pub(super) struct NodeOps {
    pub me: String,
    pub router: Router,
    pub registry: ActorRef<RegistryMsg>,
    pub membership: ActorRef<MembershipMsg>,
    pub transport: ActorRef<TransportMsg>,
    pub alive: watch::Receiver<Arc<Vec<MemberId>>>,
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
        let name = name.to_string();
        self.registry
            .call(
                |reply| RegistryMsg::Pin {
                    name,
                    version,
                    reply,
                },
                Some(Duration::from_secs(15)),
            )
            .await
            .map_err(|e| NodeError::actor("registry", e))?
            .success_or(())
            .map_err(|_| NodeError::Actor("the registry did not answer in time".into()))?
            .map_err(NodeError::Registry)
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
}
