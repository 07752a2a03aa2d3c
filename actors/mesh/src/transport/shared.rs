//! What the actor and its connection tasks share.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use klf_proto::Limits;
use quinn::Connection;

use super::FrameHandler;
use super::join_gate::JOIN_RATE;
use super::rate_limit::{RateRefusal, SourceRateLimit};

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
    /// Join attempts per source, shared by every accept task.
    join_rate: Mutex<SourceRateLimit>,
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
            join_rate: Mutex::new(SourceRateLimit::new(JOIN_RATE)),
        }
    }

    pub fn is_partitioned(&self, node_id: &str) -> bool {
        self.partitioned
            .read()
            .map(|set| set.contains(node_id))
            .unwrap_or(false)
    }

    /// Takes one join attempt from the bucket of `ip`.
    pub fn admit_join_attempt(&self, ip: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        // No update leaves the buckets half-written, so a lock poisoned by a panic elsewhere is
        // still safe to use.
        self.join_rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_acquire(ip, now)
    }
}
