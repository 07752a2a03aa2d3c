//! The transport actor: the node's one QUIC endpoint, speaking KLF under mutual TLS.
//!
//! - One endpoint serves both ALPNs: `klf/1` for members (client certificate required, peer node id
//!   read from it) and `klf-join/1` for nodes redeeming a join token.
//! - One connection per peer, reused for everything and by both sides: a connection a peer opened to
//!   us also carries our traffic to it. Dials that fail back off exponentially.
//! - Every connection starts with `Hello` → `HelloAck` (version negotiation, mesh check).
//! - A request is one frame on a new bidirectional stream answered by one frame; a one-way message
//!   is a datagram (or a unidirectional stream when it is too large for one).
//! - Incoming frames go to the actor that owns them through the [`FrameHandler`] the node installs;
//!   `Ping` is answered here. Bad frames get a typed `Error` frame and the connection goes on.

use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use klf_proto::{
    ErrorCode, Frame, Hello, HelloAck, JoinRequest, Limits, ProtoError, ProtocolVersion,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{Instrument, debug, info, info_span, warn};

use super::stream::{error_frame_for, exchange, read_frame, write_frame};
use klf_security::{NodeCredentials, PeerIdentity, SecurityError, tls};

/// How long a dial (QUIC + TLS handshake + Hello) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait before dialing an address again after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages queued for a peer while its connection is being dialed.
const MAX_PENDING_PER_DIAL: usize = 256;

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_NO_CERT: u32 = 0x101;
const CLOSE_HELLO_FAILED: u32 = 0x102;

/// Errors of the transport.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} is unreachable and backing off; next dial in {retry_in:?}")]
    BackingOff { addr: String, retry_in: Duration },
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("the peer refused ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("security: {0}")]
    Security(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the transport is shutting down")]
    ShuttingDown,
}

impl From<SecurityError> for TransportError {
    fn from(e: SecurityError) -> Self {
        Self::Security(e.to_string())
    }
}

/// Where to send: an address to dial and, when known, the node expected there (used to find an
/// existing connection, including one the peer opened to us).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub addr: String,
    pub node_id: Option<String>,
}

impl PeerAddr {
    /// A peer known only by address.
    pub fn addr(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            node_id: None,
        }
    }
}

/// A live connection, as reported by [`TransportMsg::Peers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: String,
    pub name: String,
    pub remote: SocketAddr,
    pub version: ProtocolVersion,
    pub rtt: Duration,
}

/// Where incoming frames go. Installed by the node once the actors that own the frames exist.
pub trait FrameHandler: Send + Sync + 'static {
    /// A request from an authenticated member; the returned frame is the answer.
    fn request(&self, peer: PeerIdentity, frame: Frame) -> BoxFuture<'static, Frame>;
    /// A one-way message from an authenticated member.
    fn message(&self, peer: PeerIdentity, frame: Frame);
    /// A join request from an unauthenticated client on the `klf-join/1` ALPN.
    fn join(&self, request: JoinRequest, remote: SocketAddr) -> BoxFuture<'static, Frame>;
}

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
    conn: Connection,
    identity: PeerIdentity,
    version: ProtocolVersion,
}

enum Pending {
    Request(Frame, RpcReplyPort<Result<Frame, TransportError>>),
    Send(Frame),
}

struct Backoff {
    until: Instant,
    delay: Duration,
}

/// What the connection tasks share.
struct Shared {
    limits: Limits,
    mesh_id: String,
    node_id: String,
    handler: OnceLock<Arc<dyn FrameHandler>>,
    /// Peers cut off by fault injection ([`TransportMsg::SetPartitioned`]).
    partitioned: std::sync::RwLock<HashSet<String>>,
    /// The live connection to each peer, mirrored from the actor's table so that hot-path
    /// requests can open a stream from the caller's own task (see [`TransportHandle`]).
    connections: std::sync::RwLock<HashMap<String, Connection>>,
}

impl Shared {
    fn is_partitioned(&self, node_id: &str) -> bool {
        self.partitioned
            .read()
            .map(|set| set.contains(node_id))
            .unwrap_or(false)
    }
}

/// Requests on live connections straight from the caller's task.
///
/// A request through [`TransportMsg::Request`] costs three task hand-offs (the actor's mailbox, the
/// task that runs the exchange, the reply); on a two-core machine each wakes a parked thread.
/// The router's invokes take this path instead when a connection is up, and fall back to the
/// actor (which dials, queues and backs off) when it is not.
#[derive(Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

impl TransportHandle {
    /// Sends `frame` to `node_id` on its live connection and waits for the answer; `None` when
    /// there is no live connection (use the actor then).
    pub async fn request_live(
        &self,
        node_id: &str,
        frame: &Frame,
    ) -> Option<Result<Frame, TransportError>> {
        if self.shared.is_partitioned(node_id) {
            return None;
        }
        let conn = self
            .shared
            .connections
            .read()
            .ok()?
            .get(node_id)
            .filter(|c| c.close_reason().is_none())
            .cloned()?;
        Some(exchange(&conn, frame, &self.shared.limits).await)
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
    backoff: HashMap<String, Backoff>,
    accept_task: tokio::task::JoinHandle<()>,
    shutting_down: bool,
}

/// The QUIC settings of every KLF connection (public so benchmarks build their floors alike).
pub fn quic_transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(VarInt::from_u32(5_000).into()))
        .max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(256));
    Arc::new(config)
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
        let shared = Arc::new(Shared {
            limits: args.limits,
            mesh_id: args.mesh_id,
            node_id: args.credentials.node_id.clone(),
            handler: OnceLock::new(),
            partitioned: std::sync::RwLock::new(HashSet::new()),
            connections: std::sync::RwLock::new(HashMap::new()),
        });
        info!(addr = %endpoint.local_addr()?, node_id = %shared.node_id, "transport listening");
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), myself));
        Ok(TransportState {
            endpoint,
            client_config,
            shared,
            peers: HashMap::new(),
            addrs: HashMap::new(),
            dialing: HashMap::new(),
            backoff: HashMap::new(),
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
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
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
                let _ = reply.send(TransportHandle {
                    shared: state.shared.clone(),
                });
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
                    .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node leaving");
                let endpoint = state.endpoint.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle())
                        .await;
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
            if let Pending::Request(_, reply) = pending {
                let _ = reply.send(Err(TransportError::ShuttingDown));
            }
            return;
        }
        let node_id = to.node_id.as_ref().or_else(|| self.addrs.get(&to.addr));
        if node_id.is_some_and(|id| self.shared.is_partitioned(id)) {
            if let Pending::Request(_, reply) = pending {
                let _ = reply.send(Err(TransportError::Unreachable {
                    addr: to.addr,
                    reason: "partitioned (fault injection)".into(),
                }));
            }
            return;
        }
        if let Some(peer) = self.live_connection(&to) {
            deliver(&peer.conn, &self.shared, pending);
            return;
        }
        if let Some(queue) = self.dialing.get_mut(&to.addr) {
            if queue.len() < MAX_PENDING_PER_DIAL {
                queue.push(pending);
            } else if let Pending::Request(_, reply) = pending {
                let _ = reply.send(Err(TransportError::Unreachable {
                    addr: to.addr,
                    reason: "too many requests waiting for the connection".into(),
                }));
            }
            return;
        }
        if let Some(backoff) = self.backoff.get(&to.addr) {
            let now = Instant::now();
            if backoff.until > now {
                if let Pending::Request(_, reply) = pending {
                    let _ = reply.send(Err(TransportError::BackingOff {
                        addr: to.addr,
                        retry_in: backoff.until - now,
                    }));
                }
                return;
            }
        }
        self.dialing.insert(to.addr.clone(), vec![pending]);
        let endpoint = self.endpoint.clone();
        let config = self.client_config.clone();
        let shared = self.shared.clone();
        let myself = myself.clone();
        let span = info_span!("dial", addr = %to.addr);
        tokio::spawn(
            async move {
                let result =
                    tokio::time::timeout(DIAL_TIMEOUT, dial(&endpoint, config, &to.addr, &shared))
                        .await
                        .unwrap_or_else(|_| {
                            Err(TransportError::Unreachable {
                                addr: to.addr.clone(),
                                reason: format!("no handshake within {DIAL_TIMEOUT:?}"),
                            })
                        });
                let conn = result
                    .as_ref()
                    .ok()
                    .map(|c| (c.conn.clone(), c.identity.clone()));
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
                    self.backoff.remove(&addr);
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
                let delay = self
                    .backoff
                    .get(&addr)
                    .map_or(BACKOFF_MIN, |b| (b.delay * 2).min(BACKOFF_MAX));
                debug!(%addr, %error, ?delay, "dial failed; backing off");
                self.backoff.insert(
                    addr.clone(),
                    Backoff {
                        until: Instant::now() + delay,
                        delay,
                    },
                );
                for p in pending {
                    if let Pending::Request(_, reply) = p {
                        let _ = reply.send(Err(error.clone()));
                    }
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
                    let result = async {
                        let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
                        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
                        send.finish().map_err(|e| e.to_string())
                    }
                    .await;
                    if let Err(error) = result {
                        debug!(%error, "message not sent");
                    }
                });
            }
        }
    }
}

/// Dials `addr`, checks the mesh certificate and runs `Hello`.
async fn dial(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    shared: &Shared,
) -> Result<Connected, TransportError> {
    let unreachable = |reason: String| TransportError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let socket = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| unreachable("the name resolves to no address".into()))?;
    let server_name = tls::server_name();
    let conn = endpoint
        .connect_with(config, socket, &server_name.to_str())
        .map_err(|e| unreachable(e.to_string()))?
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let identity = peer_identity(&conn)?;
    let hello = Frame::Hello(Hello {
        protocol_versions: klf_proto::SUPPORTED_VERSIONS.to_vec(),
        node_id: shared.node_id.clone(),
        mesh_id: shared.mesh_id.clone(),
        features: Vec::new(),
    });
    match exchange(&conn, &hello, &shared.limits).await {
        Ok(Frame::HelloAck(ack)) => Ok(Connected {
            conn,
            identity,
            version: ack.version,
        }),
        Ok(other) => {
            conn.close(VarInt::from_u32(CLOSE_HELLO_FAILED), b"expected HelloAck");
            Err(TransportError::Connection(format!(
                "expected HelloAck, got {}",
                other.kind_name()
            )))
        }
        Err(e) => {
            conn.close(VarInt::from_u32(CLOSE_HELLO_FAILED), b"hello failed");
            Err(e)
        }
    }
}

fn peer_identity(conn: &Connection) -> Result<PeerIdentity, TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| TransportError::Security("the peer presented no certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| TransportError::Security("the peer presented an empty chain".into()))?;
    Ok(PeerIdentity::from_cert(leaf)?)
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>, myself: ActorRef<TransportMsg>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        let myself = myself.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                if let Err(error) = accept_one(incoming, shared, myself).await {
                    debug!(%error, "incoming connection refused");
                }
            }
            .instrument(info_span!("accept", %remote)),
        );
    }
}

async fn accept_one(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    myself: ActorRef<TransportMsg>,
) -> Result<(), TransportError> {
    let conn = incoming
        .await
        .map_err(|e| TransportError::Connection(e.to_string()))?;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(klf_proto::ALPN_JOIN) {
        return serve_join(conn, &shared).await;
    }
    let identity = match peer_identity(&conn) {
        Ok(identity) => identity,
        Err(e) => {
            conn.close(
                VarInt::from_u32(CLOSE_NO_CERT),
                b"klf/1 requires a client certificate from the mesh CA",
            );
            return Err(e);
        }
    };
    let version = answer_hello(&conn, &identity, &shared).await?;
    myself
        .cast(TransportMsg::Connected {
            dialed: None,
            result: Ok(Box::new(Connected {
                conn: conn.clone(),
                identity: identity.clone(),
                version,
            })),
        })
        .map_err(|_| TransportError::ShuttingDown)?;
    serve(conn, identity, shared, myself).await;
    Ok(())
}

/// Reads the dialer's `Hello` from its first stream and answers it.
async fn answer_hello(
    conn: &Connection,
    identity: &PeerIdentity,
    shared: &Shared,
) -> Result<ProtocolVersion, TransportError> {
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| TransportError::Connection(e.to_string()))?;
    let refuse = async |send: &mut quinn::SendStream, code, message: String| {
        let _ = write_frame(send, &Frame::error(code, message.clone()), &shared.limits).await;
        // Give the error frame a moment to reach the peer before the connection closes.
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
        conn.close(VarInt::from_u32(CLOSE_HELLO_FAILED), message.as_bytes());
        Err(TransportError::Remote { code, message })
    };
    let hello = match read_frame(&mut recv, &shared.limits).await {
        Ok(Frame::Hello(hello)) => hello,
        Ok(other) => {
            let msg = format!("the first frame must be Hello, got {}", other.kind_name());
            return refuse(&mut send, ErrorCode::Malformed, msg).await;
        }
        Err(TransportError::Proto(e)) => return refuse(&mut send, e.code(), e.to_string()).await,
        Err(e) => return Err(e),
    };
    if hello.mesh_id != shared.mesh_id {
        let msg = format!(
            "this node belongs to mesh {}, not {}",
            shared.mesh_id, hello.mesh_id
        );
        return refuse(&mut send, ErrorCode::Unauthorized, msg).await;
    }
    if hello.node_id != identity.node_id {
        let msg = format!(
            "Hello claims node {} but the certificate is node {}",
            hello.node_id, identity.node_id
        );
        return refuse(&mut send, ErrorCode::Unauthorized, msg).await;
    }
    let version =
        match klf_proto::negotiate(klf_proto::SUPPORTED_VERSIONS, &hello.protocol_versions) {
            Ok(v) => v,
            Err(e) => return refuse(&mut send, e.code(), e.to_string()).await,
        };
    let ack = Frame::HelloAck(HelloAck {
        version,
        node_id: shared.node_id.clone(),
        features: Vec::new(),
    });
    write_frame(&mut send, &ack, &shared.limits).await?;
    Ok(version)
}

/// Serves one join request on a `klf-join/1` connection, then lets the client close.
async fn serve_join(conn: Connection, shared: &Shared) -> Result<(), TransportError> {
    let (mut send, mut recv) = tokio::time::timeout(DIAL_TIMEOUT * 5, conn.accept_bi())
        .await
        .map_err(|_| TransportError::Timeout(DIAL_TIMEOUT * 5))?
        .map_err(|e| TransportError::Connection(e.to_string()))?;
    let answer = match read_frame(&mut recv, &shared.limits).await {
        Ok(Frame::JoinRequest(request)) => match shared.handler.get() {
            Some(handler) => handler.join(request, conn.remote_address()).await,
            None => Frame::error(ErrorCode::Unavailable, "the node is still starting; retry"),
        },
        Ok(other) => Frame::error(
            ErrorCode::Unauthorized,
            format!(
                "only JoinRequest is allowed without a mesh certificate, got {}",
                other.kind_name()
            ),
        ),
        Err(TransportError::Proto(e)) => error_frame_for(&e),
        Err(e) => return Err(e),
    };
    write_frame(&mut send, &answer, &shared.limits).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    Ok(())
}

/// Serves a member connection until it closes: requests on bidirectional streams, messages on
/// datagrams and unidirectional streams.
async fn serve(
    conn: Connection,
    peer: PeerIdentity,
    shared: Arc<Shared>,
    myself: ActorRef<TransportMsg>,
) {
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(send, recv, peer.clone(), shared.clone()));
                }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(mut recv) => {
                    let (peer, shared) = (peer.clone(), shared.clone());
                    tokio::spawn(async move {
                        match read_frame(&mut recv, &shared.limits).await {
                            Ok(frame) => dispatch_message(&shared, peer, frame),
                            Err(error) => debug!(%error, node_id = %peer.node_id, "bad message stream"),
                        }
                    });
                }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => match klf_proto::decode(&bytes, &shared.limits) {
                    Ok((frame, _)) => dispatch_message(&shared, peer.clone(), frame),
                    Err(error) => debug!(%error, node_id = %peer.node_id, "bad datagram"),
                },
                Err(_) => break,
            },
        }
    }
    let _ = myself.cast(TransportMsg::Disconnected {
        node_id: peer.node_id,
        stable_id: conn.stable_id(),
    });
}

fn dispatch_message(shared: &Shared, peer: PeerIdentity, frame: Frame) {
    if shared.is_partitioned(&peer.node_id) {
        return;
    }
    match shared.handler.get() {
        Some(handler) => handler.message(peer, frame),
        None => debug!(
            kind = frame.kind_name(),
            "message before the handler was installed"
        ),
    }
}

async fn serve_request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: PeerIdentity,
    shared: Arc<Shared>,
) {
    if shared.is_partitioned(&peer.node_id) {
        return;
    }
    let answer = match read_frame(&mut recv, &shared.limits).await {
        Ok(Frame::Ping(ping)) => Frame::Pong(klf_proto::Pong {
            payload: ping.payload,
        }),
        Ok(Frame::Hello(_)) => Frame::error(ErrorCode::Malformed, "Hello was already exchanged"),
        Ok(frame) => match shared.handler.get() {
            Some(handler) => handler.request(peer, frame).await,
            None => Frame::error(ErrorCode::Unavailable, "the node is still starting; retry"),
        },
        Err(TransportError::Proto(error)) => {
            debug!(%error, node_id = %peer.node_id, "refusing a bad frame");
            // Stop reading whatever else the peer sends on this stream (for example the body
            // behind a huge length prefix); the connection and its other streams go on.
            let _ = recv.stop(VarInt::from_u32(error.code().to_u16().into()));
            error_frame_for(&error)
        }
        Err(error) => {
            debug!(%error, "request stream failed");
            return;
        }
    };
    if let Err(error) = write_frame(&mut send, &answer, &shared.limits).await {
        debug!(%error, "could not answer");
    }
}
