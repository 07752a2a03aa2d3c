//! The hosts of each function under the current view of alive members, computed once per view.
//!
//! Rendezvous hashing costs one blake3 hash per alive node; on a call path that runs for every
//! invoke, in a mesh of a hundred nodes, that is most of the router's own work. The answer only
//! changes when the alive set or the replica count does, so it is kept until the view changes
//! (the placer publishes a new `Arc` only when the alive set differs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use klf_mesh::MemberId;

/// Largest number of functions remembered per view (a catalog bigger than this recomputes).
const MAX_ENTRIES: usize = 4096;

type Hosts = Arc<[MemberId]>;

/// Hosts per function (and the replica count they were placed for) for one view of the alive
/// members.
#[derive(Default)]
pub struct PlacedHosts {
    cache: Mutex<Option<View>>,
}

struct View {
    alive: Arc<Vec<MemberId>>,
    hosts: HashMap<String, (u32, Hosts)>,
}

impl PlacedHosts {
    /// The alive nodes that host `function` with `replicas` instances, best ranked first.
    pub fn hosts(&self, alive: &Arc<Vec<MemberId>>, function: &str, replicas: u32) -> Hosts {
        let Ok(mut cache) = self.cache.lock() else {
            return place(alive, function, replicas);
        };
        let view = match cache.as_mut() {
            Some(view) if Arc::ptr_eq(&view.alive, alive) => view,
            _ => cache.insert(View {
                alive: alive.clone(),
                hosts: HashMap::new(),
            }),
        };
        if let Some((placed_for, hosts)) = view.hosts.get(function)
            && *placed_for == replicas
        {
            return hosts.clone();
        }
        let hosts = place(alive, function, replicas);
        if view.hosts.len() >= MAX_ENTRIES {
            view.hosts.clear();
        }
        view.hosts
            .insert(function.to_string(), (replicas, hosts.clone()));
        hosts
    }
}

fn place(alive: &[MemberId], function: &str, replicas: u32) -> Hosts {
    let ids = alive.iter().map(|m| m.node_id.as_str());
    crate::placement::hosts(function, ids, replicas as usize)
        .into_iter()
        .filter_map(|id| alive.iter().find(|m| m.node_id == id).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Arc<Vec<MemberId>> {
        Arc::new(
            (0..n)
                .map(|i| MemberId {
                    node_id: format!("{i:016x}"),
                    name: format!("n{i}"),
                    addr: format!("127.0.0.1:{}", 7000 + i),
                    api: String::new(),
                    generation: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn agrees_with_rendezvous_and_follows_view_and_replica_changes() {
        let placed = PlacedHosts::default();
        let five = members(5);
        let direct = |alive: &Arc<Vec<MemberId>>, replicas| -> Vec<String> {
            crate::placement::hosts("f", alive.iter().map(|m| m.node_id.as_str()), replicas)
                .into_iter()
                .map(str::to_string)
                .collect()
        };
        let ids =
            |hosts: Hosts| -> Vec<String> { hosts.iter().map(|m| m.node_id.clone()).collect() };
        assert_eq!(ids(placed.hosts(&five, "f", 2)), direct(&five, 2));
        // Cached: the same answer again, and a new replica count is placed anew.
        assert_eq!(ids(placed.hosts(&five, "f", 2)), direct(&five, 2));
        assert_eq!(ids(placed.hosts(&five, "f", 3)), direct(&five, 3));
        // A new view (a node died) is placed anew, even with equal contents elsewhere.
        let four = Arc::new(five[1..].to_vec());
        assert_eq!(ids(placed.hosts(&four, "f", 3)), direct(&four, 3));
    }
}
