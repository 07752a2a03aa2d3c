//! Routes incoming frames to the actors that own them: membership frames to the membership actor,
//! catalog and artifact frames to the registry, invocations to the router, join requests to the join
//! service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use klf_proto::{Ack, Artifact, CatalogPush, ErrorCode, Frame, JoinRequest};
use ractor::ActorRef;
use tracing::debug;

use crate::AgentEndpoint;
use futures_util::future::BoxFuture;
use klf_mesh::join::JoinService;
use klf_mesh::{FrameHandler, MembershipMsg, PeerAddr};
use klf_registry::RegistryMsg;
use klf_registry::actor::encode_records;
use klf_router::Router;
use klf_security::PeerIdentity;

/// How long the owning actor may take to answer a peer's request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks an actor and turns "no answer" into an `Unavailable` error frame.
async fn ask<M, T>(
    actor: &ActorRef<M>,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
    answer: impl FnOnce(T) -> Frame,
) -> Frame
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, Some(ANSWER_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(value)) => answer(value),
        _ => Frame::error(
            ErrorCode::Unavailable,
            "the node could not answer in time; retry",
        ),
    }
}

/// Routes incoming frames to the actors that own them.
pub(super) struct NodeFrames {
    pub membership: ActorRef<MembershipMsg>,
    pub registry: ActorRef<RegistryMsg>,
    pub router: Router,
    pub join: Arc<JoinService>,
    pub agents: Arc<std::sync::OnceLock<Arc<dyn AgentEndpoint>>>,
    /// `<data>/secrets`, what `ctx.secret` reads.
    pub secrets_dir: std::path::PathBuf,
}

impl NodeFrames {
    fn membership_frame(&self, peer: &PeerIdentity, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Gossip(gossip) => {
                let _ = self.membership.cast(MembershipMsg::Gossip(gossip.data));
                None
            }
            // A node may only say that it itself is leaving.
            Frame::Leave(notice) if notice.node_id == peer.node_id => {
                let _ = self.membership.cast(MembershipMsg::PeerLeft {
                    node_id: notice.node_id,
                    generation: notice.generation,
                });
                None
            }
            Frame::Leave(notice) => Some(Frame::error(
                ErrorCode::Unauthorized,
                format!(
                    "node {} cannot announce that {} leaves",
                    peer.node_id, notice.node_id
                ),
            )),
            other => Some(other),
        }
    }
}

impl FrameHandler for NodeFrames {
    fn request(&self, peer: PeerIdentity, frame: Frame) -> BoxFuture<'static, Frame> {
        let (membership, registry) = (self.membership.clone(), self.registry.clone());
        match frame {
            Frame::MembershipSync(sync) => Box::pin(async move {
                ask(
                    &membership,
                    |reply| MembershipMsg::Sync {
                        data: sync.data,
                        reply,
                    },
                    |data| Frame::MembershipSync(klf_proto::MembershipSync { data }),
                )
                .await
            }),
            Frame::CatalogDigest(digest) => Box::pin(async move {
                // The peer is reached back over the connection it opened (found by node id).
                let from = PeerAddr {
                    addr: String::new(),
                    node_id: Some(peer.node_id),
                };
                let digest = digest
                    .entries
                    .into_iter()
                    .map(|e| (e.key, e.hash))
                    .collect();
                ask(
                    &registry,
                    |reply| RegistryMsg::Digest {
                        from,
                        digest,
                        reply,
                    },
                    |records| {
                        Frame::CatalogPush(CatalogPush {
                            records: encode_records(&records),
                        })
                    },
                )
                .await
            }),
            Frame::CatalogPull(pull) => Box::pin(async move {
                ask(
                    &registry,
                    |reply| RegistryMsg::Pull {
                        keys: pull.keys,
                        reply,
                    },
                    |records| {
                        Frame::CatalogPush(CatalogPush {
                            records: encode_records(&records),
                        })
                    },
                )
                .await
            }),
            Frame::Invoke(invoke) => {
                let router = self.router.clone();
                Box::pin(async move { Frame::InvokeReply(router.serve_remote(invoke).await) })
            }
            // Which secrets this node holds, and storing one (see `secrets`).
            Frame::Agent(message) if message.kind == super::secrets::SECRETS_KIND => Box::pin(
                std::future::ready(super::secrets::answer(&self.secrets_dir, &message)),
            ),
            // Invocation statistics for a peer's mesh view.
            Frame::Agent(message) if message.kind == klf_router::stats::STATS_KIND => Box::pin(
                std::future::ready(super::ops::answer_stats(&self.router, &message)),
            ),
            // Recent spans for a peer's `klf trace`.
            Frame::Agent(message) if message.kind == klf_router::trace_ring::TRACES_KIND => {
                Box::pin(std::future::ready(super::ops::answer_traces(&message)))
            }
            Frame::Agent(message) => match self.agents.get() {
                Some(endpoint) => {
                    let answer = endpoint.handle(peer, message);
                    Box::pin(async move {
                        match answer.await {
                            Ok(reply) => Frame::Agent(reply),
                            Err(reason) => Frame::error(ErrorCode::Unavailable, reason),
                        }
                    })
                }
                None => Box::pin(std::future::ready(Frame::error(
                    ErrorCode::Unsupported,
                    format!(
                        "no agents run on this node (asked for {:?} with a {:?} message)",
                        message.to_agent, message.kind
                    ),
                ))),
            },
            Frame::ArtifactFetch(fetch) => Box::pin(async move {
                ask(
                    &registry,
                    |reply| RegistryMsg::Artifact {
                        hash: fetch.hash,
                        reply,
                    },
                    |bytes| match bytes {
                        Some(bytes) => Frame::Artifact(Artifact {
                            hash: fetch.hash,
                            bytes,
                        }),
                        None => Frame::error(
                            ErrorCode::Unavailable,
                            "this node does not hold that artifact",
                        ),
                    },
                )
                .await
            }),
            frame => {
                let answer = match self.membership_frame(&peer, frame) {
                    None => Frame::Ack(Ack {}),
                    Some(Frame::Error(e)) => Frame::Error(e),
                    Some(other) => Frame::error(
                        ErrorCode::Unsupported,
                        format!("{} frames are not served by this node", other.kind_name()),
                    ),
                };
                Box::pin(std::future::ready(answer))
            }
        }
    }

    fn message(&self, peer: PeerIdentity, frame: Frame) {
        if let Some(other) = self.membership_frame(&peer, frame) {
            debug!(kind = other.kind_name(), node_id = %peer.node_id, "unhandled message");
        }
    }

    fn join(&self, request: JoinRequest, remote: SocketAddr) -> BoxFuture<'static, Frame> {
        let join = self.join.clone();
        Box::pin(async move { join.handle(request, remote).await })
    }
}
