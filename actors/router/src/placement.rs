//! Placement: which nodes host a function, decided by every node alone, with no leader.
//!
//! Rendezvous (highest-random-weight) hashing: each node scores every (function, node) pair with a
//! hash and a function lives on its top `replicas` alive nodes. All nodes with the same view agree;
//! when a host dies the next-ranked node takes over, and when it returns the extra instance drains.
//! Adding or removing one node moves only the functions that node gains or loses.

/// The weight of `node` for `function`: the first 8 bytes of blake3(function ‖ 0 ‖ node).
fn weight(function: &str, node: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(function.as_bytes());
    hasher.update(&[0]);
    hasher.update(node.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Every node ranked for `function`, best first (ties, which need a hash collision, by node id).
pub fn rank<'a>(function: &str, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = nodes
        .into_iter()
        .map(|n| (weight(function, n), n))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, n)| n).collect()
}

/// The node that serves `function`'s canary beside its `replicas` stable hosts: the next-ranked
/// node after them, or, in a mesh too small for one more, the last of them (which then serves the
/// canary instead). `None` only when no node is alive.
pub fn canary_host<'a>(
    function: &str,
    alive: impl IntoIterator<Item = &'a str>,
    replicas: usize,
) -> Option<&'a str> {
    let ranked = rank(function, alive);
    ranked.get(replicas).or(ranked.last()).copied()
}

/// The nodes that should host `function` with `replicas` instances among `alive` nodes.
pub fn hosts<'a>(
    function: &str,
    alive: impl IntoIterator<Item = &'a str>,
    replicas: usize,
) -> Vec<&'a str> {
    let mut ranked = rank(function, alive);
    ranked.truncate(replicas);
    ranked
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_canary_goes_to_the_next_ranked_node_or_the_last_host_of_a_small_mesh() {
        let nodes = ["a", "b", "c", "d"];
        let ranked = rank("f", nodes);
        assert_eq!(canary_host("f", nodes, 2), Some(ranked[2]));
        assert!(!hosts("f", nodes, 2).contains(&ranked[2]));
        assert_eq!(canary_host("f", nodes, 4), Some(ranked[3]), "the last host");
        assert_eq!(canary_host("f", ["a"], 1), Some("a"));
        assert_eq!(canary_host("f", Vec::<&str>::new(), 1), None);
    }

    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:016x}")).collect()
    }

    #[test]
    fn every_node_agrees_whatever_the_order_of_its_view() {
        let view = nodes(7);
        let mut reversed = view.clone();
        reversed.reverse();
        assert_eq!(
            hosts("f", view.iter().map(String::as_str), 3),
            hosts("f", reversed.iter().map(String::as_str), 3)
        );
    }

    #[test]
    fn a_dead_host_is_replaced_by_the_next_ranked_node() {
        let view = nodes(6);
        let ranked = rank("f", view.iter().map(String::as_str));
        let before = hosts("f", view.iter().map(String::as_str), 2);
        assert_eq!(before, ranked[..2]);
        let survivors: Vec<&str> = view
            .iter()
            .map(String::as_str)
            .filter(|n| *n != before[0])
            .collect();
        let after = hosts("f", survivors, 2);
        assert_eq!(after, vec![ranked[1], ranked[2]]);
    }

    #[test]
    fn more_replicas_than_nodes_uses_every_node_once() {
        let view = vec!["a", "b", "a"];
        assert_eq!(hosts("f", view, 5).len(), 2);
    }

    proptest! {
        #[test]
        fn adding_a_node_only_moves_functions_to_it(n in 1usize..12, replicas in 1usize..4, functions in proptest::collection::vec("[a-z]{1,8}", 1..40)) {
            let view = nodes(n);
            let mut grown = view.clone();
            grown.push("ffffffffffffffff".to_string());
            for f in &functions {
                let before = hosts(f, view.iter().map(String::as_str), replicas);
                let after = hosts(f, grown.iter().map(String::as_str), replicas);
                for host in &after {
                    prop_assert!(before.contains(host) || *host == "ffffffffffffffff");
                }
            }
        }
    }
}
