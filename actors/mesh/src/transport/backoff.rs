//! When to dial an address again after dials to it failed.
//!
//! A peer that is down is named again and again by gossip; without a pause every one of those
//! messages would start a dial that waits out its handshake timeout. The wait doubles with each
//! failure in a row, up to a cap, and a successful dial forgets the address.
//!
//! Pure: no clock and no I/O (the actor passes `now`), so every branch is tested without a network
//! or a sleep.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The wait after the first failed dial, and the longest wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BackoffPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl BackoffPolicy {
    /// 100 ms, doubling to 5 s: a peer that restarts is dialed again within a fraction of a
    /// second, while an address that stays dead costs one dial every 5 s.
    pub const DIAL: Self = Self {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    /// The wait after `failures` failed dials in a row: none before the first failure, then
    /// `first`, doubling with each further failure, never more than `max`.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let Some(doublings) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Failed dials of one address in a row, and when the last one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failures {
    count: u32,
    last: Instant,
}

/// The dial backoff of every address that failed lately.
#[derive(Debug)]
pub(super) struct DialBackoffs {
    policy: BackoffPolicy,
    by_addr: HashMap<String, Failures>,
}

impl DialBackoffs {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            by_addr: HashMap::new(),
        }
    }

    /// How long a dial of `addr` at `now` must still wait, or `None` when it may go ahead.
    pub fn retry_in(&self, addr: &str, now: Instant) -> Option<Duration> {
        let failures = self.by_addr.get(addr)?;
        let delay = self.policy.delay_after(failures.count);
        let left = delay.saturating_sub(now.saturating_duration_since(failures.last));
        (!left.is_zero()).then_some(left)
    }

    /// Records a failed dial of `addr` at `now`; returns the wait before the next one.
    pub fn failed(&mut self, addr: &str, now: Instant) -> Duration {
        let failures = self
            .by_addr
            .entry(addr.to_string())
            .and_modify(|f| {
                f.count = f.count.saturating_add(1);
                f.last = now;
            })
            .or_insert(Failures {
                count: 1,
                last: now,
            });
        self.policy.delay_after(failures.count)
    }

    /// A dial of `addr` succeeded: its next failure waits the shortest time again.
    pub fn succeeded(&mut self, addr: &str) {
        self.by_addr.remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        first: Duration::from_millis(100),
        max: Duration::from_millis(1000),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_failure_means_no_wait() {
        assert_eq!(POLICY.delay_after(0), Duration::ZERO);
        let backoffs = DialBackoffs::new(POLICY);
        assert_eq!(backoffs.retry_in("a:1", Instant::now()), None);
    }

    #[test]
    fn the_wait_doubles_with_each_failure_in_a_row_up_to_the_cap() {
        let waits: Vec<Duration> = (1..=6).map(|n| POLICY.delay_after(n)).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn a_huge_failure_count_stays_at_the_cap_without_overflow() {
        assert_eq!(POLICY.delay_after(33), POLICY.max);
        assert_eq!(POLICY.delay_after(u32::MAX), POLICY.max);
        let huge = BackoffPolicy {
            first: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.delay_after(3), Duration::MAX);
    }

    #[test]
    fn the_dial_policy_matches_its_documented_numbers() {
        assert_eq!(BackoffPolicy::DIAL.delay_after(1), ms(100));
        assert_eq!(BackoffPolicy::DIAL.delay_after(2), ms(200));
        assert_eq!(BackoffPolicy::DIAL.delay_after(20), Duration::from_secs(5));
    }

    #[test]
    fn a_failed_address_waits_and_the_wait_shrinks_as_time_passes() {
        let mut backoffs = DialBackoffs::new(POLICY);
        let t0 = Instant::now();
        assert_eq!(backoffs.failed("a:1", t0), ms(100));
        assert_eq!(backoffs.retry_in("a:1", t0), Some(ms(100)));
        assert_eq!(backoffs.retry_in("a:1", t0 + ms(30)), Some(ms(70)));
        assert_eq!(backoffs.retry_in("a:1", t0 + ms(100)), None);
        assert_eq!(backoffs.retry_in("a:1", t0 + ms(5000)), None);
    }

    #[test]
    fn a_dial_after_the_wait_that_fails_again_waits_twice_as_long() {
        let mut backoffs = DialBackoffs::new(POLICY);
        let t0 = Instant::now();
        backoffs.failed("a:1", t0);
        let t1 = t0 + ms(150);
        assert_eq!(backoffs.failed("a:1", t1), ms(200));
        assert_eq!(backoffs.retry_in("a:1", t1 + ms(50)), Some(ms(150)));
    }

    #[test]
    fn a_success_resets_the_wait_to_the_shortest() {
        let mut backoffs = DialBackoffs::new(POLICY);
        let t0 = Instant::now();
        for _ in 0..5 {
            backoffs.failed("a:1", t0);
        }
        backoffs.succeeded("a:1");
        assert_eq!(backoffs.retry_in("a:1", t0), None);
        assert_eq!(backoffs.failed("a:1", t0), ms(100));
    }

    #[test]
    fn addresses_back_off_independently() {
        let mut backoffs = DialBackoffs::new(POLICY);
        let t0 = Instant::now();
        backoffs.failed("a:1", t0);
        backoffs.failed("a:1", t0);
        assert_eq!(backoffs.failed("b:2", t0), ms(100));
        assert_eq!(backoffs.retry_in("a:1", t0), Some(ms(200)));
        assert_eq!(backoffs.retry_in("b:2", t0), Some(ms(100)));
        assert_eq!(backoffs.retry_in("c:3", t0), None);
    }

    #[test]
    fn a_clock_reading_before_the_failure_waits_the_whole_delay() {
        let mut backoffs = DialBackoffs::new(POLICY);
        let t0 = Instant::now() + ms(500);
        backoffs.failed("a:1", t0);
        assert_eq!(backoffs.retry_in("a:1", t0 - ms(200)), Some(ms(100)));
    }
}
