//! The mesh layer: the KLF transport over QUIC with mutual TLS, SWIM membership carried over it, and
//! the join protocol that admits new nodes.

pub mod join;
pub mod member;
pub mod membership;
pub mod stream;
pub mod transport;

pub use member::{MemberId, MemberState, MemberView};
pub use membership::{Membership, MembershipArgs, MembershipConfig, MembershipMsg};
pub use transport::{
    FrameHandler, PeerAddr, PeerInfo, Transport, TransportArgs, TransportError, TransportHandle,
    TransportMsg,
};
