//! The Kind Link Framework (KLF) wire protocol.
//!
//! This crate owns every byte that crosses the network between two KLF nodes: the [`Frame`] enum and
//! its typed bodies, the length-prefixed [`codec`], [`version`] negotiation and the protocol's
//! [`limits`] and [`ProtoError`]s. It never touches a socket, so it is tested and fuzzed in memory;
//! the QUIC driver lives in `klf-mesh` (`transport`). Like `quinn-proto` to `quinn`.
//!
//! The byte layout of a frame is documented in this crate's `README.md` and in [`codec`].

pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
pub mod version;

pub use codec::{
    FrameHeader, HEADER_LEN, decode, decode_body, decode_value, encode, encode_into, encode_value,
    parse_header,
};
pub use error::{ErrorCode, ProtoError};
pub use frame::*;
pub use limits::Limits;
pub use version::{ProtocolVersion, SUPPORTED_VERSIONS, negotiate};

/// Milliseconds since the Unix epoch: the time base of every wall-clock instant on the wire
/// (deadlines in `Invoke`) and in the records nodes keep. A clock before 1970 reads as 0.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// ALPN of the mesh protocol: every connection under it carries a client certificate from the mesh CA.
pub const ALPN_MESH: &[u8] = b"klf/1";
/// ALPN of the bootstrap protocol: the only place a client may come without a certificate, and the
/// only thing it can do there is redeem a join token.
pub const ALPN_JOIN: &[u8] = b"klf-join/1";
