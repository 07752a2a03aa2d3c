//! Watching and steering deployed functions: invocation statistics (this node's and the mesh's,
//! gathered over KLF) and rollback to a published version.

use std::sync::Arc;
use std::time::Duration;

use klf_proto::{AgentMessage, ErrorCode, Frame};
use ractor::ActorRef;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Node, NodeError};
use klf_mesh::membership::alive_members;
use klf_mesh::{MemberId, MembershipMsg, PeerAddr, TransportMsg};
use klf_registry::{Deployment, RegistryMsg};
use klf_router::stats::{self, STATS_KIND, StatsSnapshot};
use klf_router::trace_ring::{self, RecordedSpan, TRACES_KIND, TraceQuery, TraceSummary};
use klf_router::{FunctionStats, Router};

/// How long one peer may take to send its stats.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The parts of a node that stats and rollback need (cloneable, no `Node` borrow).
#[derive(Clone)]
pub(super) struct NodeOps {
    pub me: String,
    /// This node's name, for the spans it recorded.
    pub me_name: String,
    pub router: Router,
    pub registry: ActorRef<RegistryMsg>,
    pub membership: ActorRef<MembershipMsg>,
    pub transport: ActorRef<TransportMsg>,
    pub alive: watch::Receiver<Arc<Vec<MemberId>>>,
}

/// The answer to a peer's `Frame::Agent` of kind `stats`: this node's snapshots as JSON.
pub(super) fn answer_stats(router: &Router, request: &AgentMessage) -> Frame {
    agent_answer(request, &router.stats().snapshots())
}

/// Asks one peer a node-level question in a `Frame::Agent` of `kind` with a JSON `body`, and
/// decodes its JSON answer. `Err` says why not (no answer in time, another frame, garbled), in
/// words for logs and for the person who asked.
pub(crate) async fn ask_peer<T: serde::de::DeserializeOwned>(
    transport: &ActorRef<TransportMsg>,
    peer: &MemberId,
    kind: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<T, String> {
    let frame = Frame::Agent(AgentMessage {
        run_id: String::new(),
        from_agent: kind.into(),
        to_agent: kind.into(),
        kind: kind.into(),
        body,
    });
    let to = PeerAddr {
        addr: peer.addr.clone(),
        node_id: Some(peer.node_id.clone()),
    };
    let answer = transport
        .call(
            |reply| TransportMsg::Request { to, frame, reply },
            Some(timeout),
        )
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(Ok(Frame::Agent(reply)))) if reply.kind == kind => {
            serde_json::from_slice(&reply.body)
                .map_err(|e| format!("node {} answered {kind} garbled: {e}", peer.name))
        }
        Ok(ractor::rpc::CallResult::Success(Ok(Frame::Error(error)))) => {
            Err(format!("node {}: {}", peer.name, error.message))
        }
        Ok(ractor::rpc::CallResult::Success(Ok(other))) => Err(format!(
            "node {} answered {kind} with a {} frame",
            peer.name,
            other.kind_name()
        )),
        Ok(ractor::rpc::CallResult::Success(Err(error))) => {
            Err(format!("node {}: {error}", peer.name))
        }
        _ => Err(format!(
            "node {} did not answer within {timeout:?}",
            peer.name
        )),
    }
}

/// The answer to a peer's `Frame::Agent` of `kind`: `body` as JSON, or an error frame.
pub(crate) fn agent_answer(request: &AgentMessage, body: &impl serde::Serialize) -> Frame {
    match serde_json::to_vec(body) {
        Ok(body) => Frame::Agent(AgentMessage {
            run_id: request.run_id.clone(),
            from_agent: request.kind.clone(),
            to_agent: request.from_agent.clone(),
            kind: request.kind.clone(),
            body,
        }),
        Err(e) => Frame::error(
            ErrorCode::Internal,
            format!("the {} answer does not encode: {e}", request.kind),
        ),
    }
}

/// The answer to a peer's `Frame::Agent` of kind `klf.traces`: the spans of this process's ring
/// that answer the query (none when the node keeps no spans).
pub(super) fn answer_traces(request: &AgentMessage) -> Frame {
    let query: TraceQuery = match serde_json::from_slice(&request.body) {
        Ok(query) => query,
        Err(e) => {
            return Frame::error(
                ErrorCode::Malformed,
                format!("a trace query must be JSON {{trace_id?, function?, errors, limit}}: {e}"),
            );
        }
    };
    let spans = trace_ring::ring().map_or_else(Vec::new, |ring| ring.query(&query));
    agent_answer(request, &spans)
}

/// What a trace query gathered: the spans, and the members that did not answer.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GatheredSpans {
    /// Merged (each span once), oldest first, `node` given as the member's name where known.
    pub spans: Vec<RecordedSpan>,
    /// Names of the members asked that did not answer in time.
    pub missing: Vec<String>,
}

/// Asks one peer for its stats; `None` (logged) when it does not answer in time or garbles.
async fn peer_stats(
    transport: ActorRef<TransportMsg>,
    peer: MemberId,
) -> Option<Vec<StatsSnapshot>> {
    ask_peer(&transport, &peer, STATS_KIND, Vec::new(), STATS_TIMEOUT)
        .await
        .map_err(|error| debug!(node = %peer.name, %error, "no stats from a peer"))
        .ok()
}

impl NodeOps {
    fn function_stats(&self) -> Vec<FunctionStats> {
        self.router.stats().stats()
    }

    /// The other members that are alive now, as membership sees them.
    async fn alive_peers(&self) -> Vec<MemberId> {
        alive_members(&self.membership)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.node_id != self.me)
            .collect()
    }

    async fn mesh_function_stats(&self) -> Vec<FunctionStats> {
        let peers = self.alive_peers().await;
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

    /// Asks every alive member (and this node) for the spans answering `query`, merged.
    async fn gather_spans(&self, query: &TraceQuery) -> GatheredSpans {
        let peers = self.alive_peers().await;
        let mut names: std::collections::HashMap<String, String> = peers
            .iter()
            .map(|p| (p.node_id.clone(), p.name.clone()))
            .collect();
        let body = match serde_json::to_vec(query) {
            Ok(body) => body,
            Err(error) => {
                warn!(%error, "a trace query does not encode; only this node's spans are shown");
                return GatheredSpans {
                    spans: trace_ring::ring().map_or_else(Vec::new, |ring| ring.query(query)),
                    missing: Vec::new(),
                };
            }
        };
        let mut asks = tokio::task::JoinSet::new();
        for peer in peers {
            let transport = self.transport.clone();
            let body = body.clone();
            asks.spawn(async move {
                let answer: Result<Vec<RecordedSpan>, String> =
                    ask_peer(&transport, &peer, TRACES_KIND, body, STATS_TIMEOUT).await;
                (peer.name, answer)
            });
        }
        let mut answers = vec![trace_ring::ring().map_or_else(Vec::new, |ring| ring.query(query))];
        let mut missing = Vec::new();
        while let Some(answer) = asks.join_next().await {
            match answer {
                Ok((_, Ok(spans))) => answers.push(spans),
                Ok((name, Err(error))) => {
                    debug!(node = %name, %error, "no spans from a peer");
                    missing.push(name);
                }
                Err(_) => {}
            }
        }
        if let Some(me) = self.me_name() {
            names.insert(self.me.clone(), me);
        }
        let mut spans = trace_ring::merge(answers);
        for span in &mut spans {
            if let Some(name) = names.get(&span.node) {
                span.node = name.clone();
            }
        }
        missing.sort();
        GatheredSpans { spans, missing }
    }

    fn me_name(&self) -> Option<String> {
        Some(self.me_name.clone()).filter(|n| !n.is_empty())
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
    /// The other members that are alive now, as membership sees them (not the placer's view,
    /// which follows a moment later).
    pub async fn alive_peers(&self) -> Vec<MemberId> {
        self.ops.alive_peers().await
    }

    /// What the calls served by this node did, per function@version.
    pub fn function_stats(&self) -> Vec<FunctionStats> {
        self.ops.function_stats()
    }

    /// The stats of every alive member (asked over KLF), merged per function@version. Members that
    /// do not answer within 2 s are left out.
    pub async fn mesh_function_stats(&self) -> Vec<FunctionStats> {
        self.ops.mesh_function_stats().await
    }

    /// Every span of trace `trace_id` that an alive member still keeps (including this node),
    /// merged.
    pub async fn trace(&self, trace_id: &str) -> GatheredSpans {
        let query = TraceQuery {
            trace_id: Some(trace_id.to_ascii_lowercase()),
            ..TraceQuery::default()
        };
        self.ops.gather_spans(&query).await
    }

    /// The most recent traces the members keep, newest first (the query's filters and limit),
    /// and the members that did not answer.
    pub async fn recent_traces(&self, query: &TraceQuery) -> (Vec<TraceSummary>, Vec<String>) {
        let gathered = self.ops.gather_spans(query).await;
        (
            trace_ring::summarize(&gathered.spans, query.limit.max(1)),
            gathered.missing,
        )
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
