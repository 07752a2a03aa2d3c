//! Which host serves a call: the less busy of two random hosts (power of two choices), which
//! spreads load nearly as well as asking every host, at the cost of two counter reads.

use std::collections::HashMap;

/// Picks from `hosts` (never empty when called) the one with fewer calls in flight among two
/// distinct random candidates; `random` supplies randomness (an index source).
pub fn pick<'a>(
    hosts: &[&'a str],
    in_flight: &HashMap<String, usize>,
    mut random: impl FnMut(usize) -> usize,
) -> Option<&'a str> {
    match hosts.len() {
        0 => None,
        1 => Some(hosts[0]),
        n => {
            let a = random(n);
            let mut b = random(n - 1);
            if b >= a {
                b += 1;
            }
            let load = |h: &str| in_flight.get(h).copied().unwrap_or(0);
            let (x, y) = (hosts[a], hosts[b]);
            Some(if load(y) < load(x) { y } else { x })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_busy_of_the_two_candidates_wins() {
        let hosts = ["a", "b", "c"];
        let busy = HashMap::from([("a".to_string(), 5), ("b".to_string(), 1)]);
        // Candidates a (index 0) and b (second draw 0 -> bumped past a to 1).
        assert_eq!(pick(&hosts, &busy, |_| 0), Some("b"));
        assert_eq!(pick(&["x"], &busy, |_| 0), Some("x"));
        assert_eq!(pick(&[], &busy, |_| 0), None);
    }

    #[test]
    fn two_candidates_are_always_distinct() {
        let hosts = ["a", "b"];
        let mut draws = [1usize, 0].into_iter();
        let idle = HashMap::from([("a".to_string(), 3)]);
        // First draw picks b; the second (0) is a; b is idle and wins.
        assert_eq!(
            pick(&hosts, &idle, |_| draws.next().unwrap_or(0)),
            Some("b")
        );
    }
}
