//! The transport actor: owns the endpoint and the table of connections, routes outgoing frames to
//! a live connection or a dial, and hands out [`TransportHandle`]s.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use klf_proto::{Frame, Limits, ProtocolVersion};
use klf_security::{NodeCredentials, PeerIdentity, tls};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{Instrument, debug, info, info_span, warn};

use super::accept::accept_loop;
use super::backoff::{BackoffPolicy, DialBackoffs};
use super::dial::dial;
use super::error::{DialError, StreamError, TransportError};
use super::handle::TransportHandle;
use super::serve::serve;
use super::shared::Shared;
use super::{FrameHandler, PeerAddr, PeerInfo, close_code, quic_transport_config};
use crate::stream::exchange;

/// Messages queued for a peer while its connection is being dialed.
const MAX_PENDING_PER_DIAL: usize = 256;
/// How long a shutdown waits for the close to reach the peers.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Arguments of the transport actor.
pub struct TransportArgs {
    pub listen: SocketAddr,
    pub credentials: NodeCredentials,
    pub mesh_id: String,
    pub limits: Limits,
}

/// The transport's public face.
pub enum TransportMsg {
    /// A one-way frame; dropped if the peer is unreachable (membership tolerates loss).
    Send { to: PeerAddr, frame: Frame },
    /// A request answered by one frame.
    Request {
        to: PeerAddr,
        frame: Frame,
        reply: RpcReplyPort<Result<Frame, TransportError>>,
    },
    /// Installs the handler of incoming frames.
    SetHandler(Arc<dyn FrameHandler>),
    /// Fault injection for tests and drills: drop all traffic to and from these node ids, as a
    /// network partition would (connections stay open; frames are silently lost). Empty heals.
    SetPartitioned(HashSet<String>),
    /// Live connections.
    Peers(RpcReplyPort<Vec<PeerInfo>>),
    /// The bound UDP address (useful with port 0).
    LocalAddr(RpcReplyPort<SocketAddr>),
    /// Closes every connection and the endpoint, waiting briefly for the close to be sent.
    Shutdown(RpcReplyPort<()>),
    /// A handle for requests on live connections without a trip through this actor.
    Handle(RpcReplyPort<TransportHandle>),
    /// Internal: a dial or an accept finished its handshake.
    Connected {
        dialed: Option<String>,
        result: Result<Box<Connected>, TransportError>,
    },
    /// Internal: a connection closed.
    Disconnected { node_id: String, stable_id: usize },
}

/// A connection that finished TLS and Hello.
pub struct Connected {
    pub(super) conn: Connection,
    pub(super) identity: PeerIdentity,
    pub(super) version: ProtocolVersion,
}

enum Pending {
    Request(Frame, RpcReplyPort<Result<Frame, TransportError>>),
    Send(Frame),
}

impl Pending {
    /// Fails the pending request with `error`; a one-way message is dropped silently, as an
    /// unreachable peer's messages are.
    fn fail(self, error: TransportError) {
        if let Self::Request(_, reply) = self {
            // The caller may have given up waiting; then nobody needs the answer.
            let _ = reply.send(Err(error));
        }
    }
}

/// The transport actor.
pub struct Transport;

/// The transport actor's state.
pub struct TransportState {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    shared: Arc<Shared>,
    peers: HashMap<String, Connected>,
    addrs: HashMap<String, String>,
    dialing: HashMap<String, Vec<Pending>>,
    backoff: DialBackoffs,
    accept_task: tokio::task::JoinHandle<()>,
    shutting_down: bool,
}

impl Actor for Transport {
    type Msg = TransportMsg;
    type State = TransportState;
    type Arguments = TransportArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TransportArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let transport_config = quic_transport_config();
        let server_tls = QuicServerConfig::try_from(tls::server_config(&args.credentials)?)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server_config.transport_config(transport_config.clone());
        let client_tls = QuicClientConfig::try_from(tls::mesh_client_config(&args.credentials)?)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
        client_config.transport_config(transport_config);
        let endpoint = Endpoint::server(server_config, args.listen)?;
        let shared = Arc::new(Shared::new(
            args.limits,
            args.mesh_id,
            args.credentials.node_id.clone(),
        ));
        info!(addr = %endpoint.local_addr()?, node_id = %shared.node_id, "transport listening");
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), myself));
        Ok(TransportState {
            endpoint,
            client_config,
            shared,
            peers: HashMap::new(),
            addrs: HashMap::new(),
            dialing: HashMap::new(),
            backoff: DialBackoffs::new(BackoffPolicy::DIAL),
            accept_task,
            shutting_down: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.accept_task.abort();
        state
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"node stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Replies below go to callers that may have stopped waiting; a failed send means nobody
        // needs the answer, so it is ignored.
        match msg {
            TransportMsg::Send { to, frame } => state.route(&myself, to, Pending::Send(frame)),
            TransportMsg::Request { to, frame, reply } => {
                state.route(&myself, to, Pending::Request(frame, reply))
            }
            TransportMsg::SetHandler(handler) => {
                if state.shared.handler.set(handler).is_err() {
                    warn!("frame handler already installed; ignoring the new one");
                }
            }
            TransportMsg::SetPartitioned(node_ids) => {
                warn!(?node_ids, "fault injection: partitioned from these peers");
                if let Ok(mut set) = state.shared.partitioned.write() {
                    *set = node_ids;
                }
            }
            TransportMsg::Peers(reply) => {
                let peers = state
                    .peers
                    .values()
                    .filter(|c| c.conn.close_reason().is_none())
                    .map(|c| PeerInfo {
                        node_id: c.identity.node_id.clone(),
                        name: c.identity.name.clone(),
                        remote: c.conn.remote_address(),
                        version: c.version,
                        rtt: c.conn.rtt(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            TransportMsg::Handle(reply) => {
                let _ = reply.send(TransportHandle::new(state.shared.clone()));
            }
            TransportMsg::LocalAddr(reply) => {
                if let Ok(addr) = state.endpoint.local_addr() {
                    let _ = reply.send(addr);
                }
            }
            TransportMsg::Shutdown(reply) => {
                state.shutting_down = true;
                state.accept_task.abort();
                state
                    .endpoint
                    .close(close_code::SHUTDOWN.into(), b"node leaving");
                let endpoint = state.endpoint.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
                    let _ = reply.send(());
                });
            }
            TransportMsg::Connected { dialed, result } => state.connected(dialed, result),
            TransportMsg::Disconnected { node_id, stable_id } => {
                if state
                    .peers
                    .get(&node_id)
                    .is_some_and(|c| c.conn.stable_id() == stable_id)
                {
                    debug!(%node_id, "connection closed");
                    state.peers.remove(&node_id);
                    if let Ok(mut connections) = state.shared.connections.write() {
                        connections.remove(&node_id);
                    }
                }
            }
        }
        Ok(())
    }
}

impl TransportState {
    fn live_connection(&self, to: &PeerAddr) -> Option<&Connected> {
        let node_id = to.node_id.as_ref().or_else(|| self.addrs.get(&to.addr))?;
        self.peers
            .get(node_id)
            .filter(|c| c.conn.close_reason().is_none())
    }

    fn route(&mut self, myself: &ActorRef<TransportMsg>, to: PeerAddr, pending: Pending) {
        if self.shutting_down {
            return pending.fail(TransportError::ShuttingDown);
        }
        let node_id = to.node_id.as_ref().or_else(|| self.addrs.get(&to.addr));
        if node_id.is_some_and(|id| self.shared.is_partitioned(id)) {
            return pending.fail(TransportError::unreachable(to.addr, DialError::Partitioned));
        }
        if let Some(peer) = self.live_connection(&to) {
            return deliver(&peer.conn, &self.shared, pending);
        }
        if let Some(queue) = self.dialing.get_mut(&to.addr) {
            if queue.len() < MAX_PENDING_PER_DIAL {
                queue.push(pending);
            } else {
                pending.fail(TransportError::unreachable(
                    to.addr,
                    DialError::QueueFull {
                        max: MAX_PENDING_PER_DIAL,
                    },
                ));
            }
            return;
        }
        if let Some(retry_in) = self.backoff.retry_in(&to.addr, Instant::now()) {
            return pending.fail(TransportError::BackingOff {
                addr: to.addr,
                retry_in,
            });
        }
        self.dialing.insert(to.addr.clone(), vec![pending]);
        let endpoint = self.endpoint.clone();
        let config = self.client_config.clone();
        let shared = self.shared.clone();
        let myself = myself.clone();
        let span = info_span!("dial", addr = %to.addr);
        tokio::spawn(
            async move {
                let result = dial(&endpoint, config, &to.addr, &shared).await;
                let conn = result
                    .as_ref()
                    .ok()
                    .map(|c| (c.conn.clone(), c.identity.clone()));
                // The actor being gone means the node is stopping; the connection then closes
                // with the endpoint.
                let _ = myself.cast(TransportMsg::Connected {
                    dialed: Some(to.addr.clone()),
                    result: result.map(Box::new),
                });
                if let Some((conn, identity)) = conn {
                    serve(conn, identity, shared, myself).await;
                }
            }
            .instrument(span),
        );
    }

    fn connected(
        &mut self,
        dialed: Option<String>,
        result: Result<Box<Connected>, TransportError>,
    ) {
        let pending = dialed
            .as_ref()
            .and_then(|addr| self.dialing.remove(addr))
            .unwrap_or_default();
        match result {
            Ok(connected) => {
                let node_id = connected.identity.node_id.clone();
                if let Some(addr) = dialed {
                    self.backoff.succeeded(&addr);
                    self.addrs.insert(addr, node_id.clone());
                }
                for p in pending {
                    deliver(&connected.conn, &self.shared, p);
                }
                // Keep an existing live connection if there is one (the peer may have dialed us at
                // the same moment); both keep working until one closes.
                let keep_existing = self
                    .peers
                    .get(&node_id)
                    .is_some_and(|c| c.conn.close_reason().is_none());
                if !keep_existing {
                    debug!(%node_id, name = %connected.identity.name, "peer connected");
                    if let Ok(mut connections) = self.shared.connections.write() {
                        connections.insert(node_id.clone(), connected.conn.clone());
                    }
                    self.peers.insert(node_id, *connected);
                }
            }
            Err(error) => {
                let Some(addr) = dialed else { return };
                let delay = self.backoff.failed(&addr, Instant::now());
                debug!(%addr, %error, ?delay, "dial failed; backing off");
                for p in pending {
                    p.fail(error.clone());
                }
            }
        }
    }
}

/// Sends a pending message on a live connection, without blocking the actor.
fn deliver(conn: &Connection, shared: &Arc<Shared>, pending: Pending) {
    match pending {
        Pending::Request(frame, reply) => {
            let conn = conn.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = reply.send(exchange(&conn, &frame, &shared.limits).await);
            });
        }
        Pending::Send(frame) => {
            let bytes = match klf_proto::encode(&frame, &shared.limits) {
                Ok(bytes) => bytes,
                Err(error) => {
                    warn!(%error, "dropping a message that does not encode");
                    return;
                }
            };
            if conn
                .max_datagram_size()
                .is_some_and(|max| bytes.len() <= max)
            {
                if let Err(error) = conn.send_datagram(bytes.into()) {
                    debug!(%error, "datagram not sent");
                }
            } else {
                let conn = conn.clone();
                tokio::spawn(async move {
                    if let Err(error) = send_on_uni_stream(&conn, &bytes).await {
                        debug!(%error, "message not sent");
                    }
                });
            }
        }
    }
}

/// Sends an encoded message too large for a datagram on a unidirectional stream of its own.
async fn send_on_uni_stream(conn: &Connection, bytes: &[u8]) -> Result<(), TransportError> {
    let mut send = conn.open_uni().await.map_err(TransportError::Connection)?;
    send.write_all(bytes).await.map_err(StreamError::from)?;
    send.finish().map_err(StreamError::from)?;
    Ok(())
}
