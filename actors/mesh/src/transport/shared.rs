//! What the actor and its connection tasks share.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use klf_proto::Limits;
use quinn::Connection;

use super::FrameHandler;

/// What the connection tasks share.
pub(super) struct Shared {
    pub limits: Limits,
    pub mesh_id: String,
    pub node_id: String,
    pub handler: OnceLock<Arc<dyn FrameHandler>>,
    /// Peers cut off by fault injection (`TransportMsg::SetPartitioned`).
    pub partitioned: RwLock<HashSet<String>>,
    /// The live connection to each peer, mirrored from the actor's table so that hot-path
    /// requests can open a stream from the caller's own task (see `TransportHandle`).
    pub connections: RwLock<HashMap<String, Connection>>,
}

impl Shared {
    pub fn new(limits: Limits, mesh_id: String, node_id: String) -> Self {
        Self {
            limits,
            mesh_id,
            node_id,
            handler: OnceLock::new(),
            partitioned: RwLock::new(HashSet::new()),
            connections: RwLock::new(HashMap::new()),
        }
    }

    pub fn is_partitioned(&self, node_id: &str) -> bool {
        self.partitioned
            .read()
            .map(|set| set.contains(node_id))
            .unwrap_or(false)
    }
}
