//! Every frame kind of the protocol, with a typed body each.
//!
//! A frame kind is a stable `u16` on the wire (see [`Frame::kind`]); bodies are bincode-encoded
//! structs. New fields are only ever appended to a body, and decoders ignore trailing bytes inside a
//! frame, so an older node still reads what a newer one of the same major version sends.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::version::ProtocolVersion;

/// Opens a connection: the versions and features the dialing node speaks and who it claims to be.
/// The node id must match the peer's certificate, which stays the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_versions: Vec<ProtocolVersion>,
    pub node_id: String,
    pub mesh_id: String,
    pub features: Vec<String>,
}

/// Accepts a [`Hello`]: the version both will speak and the features both know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: ProtocolVersion,
    pub node_id: String,
    pub features: Vec<String>,
}

/// A typed refusal or failure, the answer to any request that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

/// Liveness probe and the transport's own echo (used by benchmarks): answered with a [`Pong`]
/// carrying the same payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub payload: Vec<u8>,
}

/// The answer to a [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub payload: Vec<u8>,
}

/// Acknowledges a one-way notice sent as a request (for example a [`LeaveNotice`]), so the sender
/// knows it arrived before it exits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {}

/// A SWIM membership packet (foca's own encoding, opaque to KLF).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    pub data: Vec<u8>,
}

/// Push-pull anti-entropy of the membership view: the sender's whole SWIM state (encoded with
/// [`crate::codec::encode_value`]); the answer carries the receiver's. It repairs what lost gossip
/// left behind, such as a suspicion nobody could refute during a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipSync {
    pub data: Vec<u8>,
}

/// Sent to every peer by a node that leaves gracefully, so peers show it `left` rather than `down`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveNotice {
    pub node_id: String,
    pub generation: u64,
}

/// One entry of a catalog digest: a record key and the hash of its current value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub key: String,
    pub hash: [u8; 32],
}

/// Anti-entropy, step one: what the sender holds, as keys and hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogDigest {
    pub entries: Vec<DigestEntry>,
}

/// Anti-entropy, step two: the records whose hashes differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogPull {
    pub keys: Vec<String>,
}

/// Anti-entropy, step three: records (encoded by the registry) answering a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogPush {
    pub records: Vec<Vec<u8>>,
}

/// Asks a peer for a content-addressed (blake3) artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFetch {
    pub hash: [u8; 32],
}

/// An artifact's bytes; the receiver verifies hash and signature before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
}

/// W3C trace context, so one trace spans every node a call crosses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

/// Calls a function on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    pub function: String,
    /// A semver range such as `^1.2`; empty means any version.
    pub version_range: String,
    /// JSON bytes.
    pub input: Vec<u8>,
    /// Absolute deadline, milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
    pub idempotency_key: Option<String>,
    pub caller_principal: String,
    pub call_depth: u16,
    pub trace: TraceContext,
}

/// Why an invocation failed, as the callee saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeFailure {
    /// A stable machine-readable kind (`user_error`, `timeout`, `out_of_memory`, `overloaded`, ...).
    pub kind: String,
    pub message: String,
}

/// The answer to an [`Invoke`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeReply {
    /// JSON output bytes, or the failure.
    pub outcome: Result<Vec<u8>, InvokeFailure>,
    /// Which function version served the call.
    pub served_by_version: String,
}

/// Tells peers a deployment changed (they also learn it by anti-entropy; this only makes it fast).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployNotice {
    pub name: String,
    pub version: String,
    pub replicas: u32,
}

/// Tells peers a function (or one version of it) was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndeployNotice {
    pub name: String,
    pub version: Option<String>,
}

/// A message between two Chef agents that run on different nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMessage {
    pub run_id: String,
    pub from_agent: String,
    pub to_agent: String,
    pub kind: String,
    /// JSON body, typed by the Chef layer.
    pub body: Vec<u8>,
}

/// Redeems a join token (only on the `klf-join/1` ALPN): the token's id and secret and a CSR for the
/// new node's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token_id: [u8; 16],
    pub secret: [u8; 32],
    pub csr_der: Vec<u8>,
    pub name: String,
    /// The QUIC address other members should use to reach the new node.
    pub advertise: String,
    /// The HTTP API address of the new node.
    pub api: String,
}

/// A member the joining node should announce itself to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedPeer {
    pub node_id: String,
    pub name: String,
    pub addr: String,
    pub api: String,
    pub generation: u64,
}

/// Grants a join: the signed certificate, the mesh CA and members to announce to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccept {
    pub node_id: String,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub mesh_id: String,
    pub mesh_name: String,
    pub seeds: Vec<SeedPeer>,
}

macro_rules! frames {
    ($( $(#[$doc:meta])* $kind:literal => $name:ident($body:ty), )*) => {
        /// A KLF frame: one message between two nodes.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Frame {
            $( $(#[$doc])* $name($body), )*
        }

        impl Frame {
            /// The frame kind's stable number on the wire.
            pub fn kind(&self) -> u16 {
                match self { $( Self::$name(_) => $kind, )* }
            }

            /// The frame kind's name, for errors and logs.
            pub fn kind_name(&self) -> &'static str {
                match self { $( Self::$name(_) => stringify!($name), )* }
            }

            /// The name of a frame kind number, if this version knows it.
            pub fn name_of_kind(kind: u16) -> Option<&'static str> {
                match kind { $( $kind => Some(stringify!($name)), )* _ => None }
            }

            /// Every frame kind this version knows.
            pub const KINDS: &'static [u16] = &[$( $kind, )*];

            pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), bincode::error::EncodeError> {
                match self {
                    $( Self::$name(body) => {
                        bincode::serde::encode_into_std_write(body, out, crate::codec::bincode_config()).map(drop)
                    } )*
                }
            }

            pub(crate) fn decode_body_of_kind(kind: u16, body: &[u8]) -> Result<Self, crate::error::ProtoError> {
                match kind {
                    $( $kind => bincode::serde::decode_from_slice::<$body, _>(body, crate::codec::bincode_config())
                        .map(|(b, _trailing_ignored)| Self::$name(b))
                        .map_err(|e| crate::error::ProtoError::Malformed { kind: stringify!($name), reason: e.to_string() }), )*
                    kind => Err(crate::error::ProtoError::UnknownFrameKind { kind }),
                }
            }
        }
    };
}

frames! {
    /// Opens a connection (first frame on the first stream).
    1 => Hello(Hello),
    /// Accepts a `Hello`.
    2 => HelloAck(HelloAck),
    /// A typed error answer.
    3 => Error(ErrorFrame),
    /// Echo request.
    4 => Ping(Ping),
    /// Echo answer.
    5 => Pong(Pong),
    /// Acknowledgement of a notice.
    6 => Ack(Ack),
    /// SWIM membership packet.
    10 => Gossip(Gossip),
    /// Graceful leave.
    11 => Leave(LeaveNotice),
    /// Membership push-pull sync.
    12 => MembershipSync(MembershipSync),
    /// Catalog anti-entropy digest.
    20 => CatalogDigest(CatalogDigest),
    /// Catalog anti-entropy pull.
    21 => CatalogPull(CatalogPull),
    /// Catalog anti-entropy push.
    22 => CatalogPush(CatalogPush),
    /// Artifact request.
    23 => ArtifactFetch(ArtifactFetch),
    /// Artifact bytes.
    24 => Artifact(Artifact),
    /// Deployment changed.
    25 => Deploy(DeployNotice),
    /// Deployment removed.
    26 => Undeploy(UndeployNotice),
    /// Function call.
    30 => Invoke(Invoke),
    /// Function call answer.
    31 => InvokeReply(InvokeReply),
    /// Chef agent message.
    40 => Agent(AgentMessage),
    /// Join token redemption (ALPN `klf-join/1` only).
    50 => JoinRequest(JoinRequest),
    /// Join granted.
    51 => JoinAccept(JoinAccept),
}

impl Frame {
    /// Shorthand for an error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(ErrorFrame {
            code,
            message: message.into(),
        })
    }
}
