//! The transport: the node's one QUIC endpoint, speaking KLF under mutual TLS.
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
//!
//! The modules split the async drivers from the decisions, the way `quinn` drives `quinn-proto` and
//! the membership actor drives foca: the `Hello` check (`handshake`), the dial backoff (`backoff`)
//! and the join rate limit (`rate_limit`) decide without I/O or a clock of their own (the caller
//! passes `now`), so every branch is unit tested; `actor`, `dial`, `accept`, `join_gate` and
//! `serve` only carry those decisions out on the network.

mod accept;
mod actor;
mod backoff;
mod dial;
mod error;
mod handle;
mod handshake;
mod join_gate;
mod rate_limit;
mod serve;
mod shared;

use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use klf_proto::{Frame, JoinRequest, ProtocolVersion};
use klf_security::PeerIdentity;
use quinn::VarInt;

pub use actor::{Connected, Transport, TransportArgs, TransportMsg, TransportState};
pub use error::{DialError, StreamError, TransportError};
pub use handle::TransportHandle;
pub use handshake::HelloRefusal;
pub use join_gate::{JOIN_RATE, JOIN_READ_DEADLINE, JoinRefusal};
pub use rate_limit::{RatePolicy, RateRefusal, Source};

/// Application close codes, so a peer (and a packet capture) can tell why a connection ended.
pub(crate) mod close_code {
    /// The node is stopping or leaving.
    pub const SHUTDOWN: u32 = 0;
    /// A `klf/1` client came without a certificate from the mesh CA.
    pub const NO_CERT: u32 = 0x101;
    /// The `Hello` exchange failed.
    pub const HELLO_FAILED: u32 = 0x102;
    /// A `klf-join/1` source made too many attempts.
    pub const JOIN_RATE_LIMITED: u32 = 0x103;
    /// A `klf-join/1` client did not deliver its request in time.
    pub const JOIN_DEADLINE: u32 = 0x104;
}

/// Closes `conn` with an application code and a reason the peer can read.
fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
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
