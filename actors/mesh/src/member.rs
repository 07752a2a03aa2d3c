//! Who a member is (its SWIM identity) and how it is shown to users.

use serde::{Deserialize, Serialize};

/// A member's SWIM identity, gossiped by foca. `node_id` is the stable key (it comes from the node's
/// certificate); `generation` grows every time the node starts or rejoins, so a restarted node
/// replaces its own earlier, dead identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node_id: String,
    pub name: String,
    /// QUIC address peers dial (`host:port`).
    pub addr: String,
    /// HTTP API address.
    pub api: String,
    pub generation: u64,
}

impl foca::Identity for MemberId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// A member's state as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    /// Left gracefully (it said goodbye before going).
    Left,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        })
    }
}

/// One row of `klf members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub addr: String,
    pub api: String,
    pub state: MemberState,
    pub generation: u64,
    /// Whether this row is the node that answered.
    #[serde(rename = "self")]
    pub is_self: bool,
}
