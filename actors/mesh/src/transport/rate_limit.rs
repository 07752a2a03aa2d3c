//! How often one source may knock on a door open to anyone: a token bucket per source, in bounded
//! memory.
//!
//! Each source has a bucket of `burst` attempts that refills by one every `refill_every`. A bucket
//! is kept as the refill time it still owes (its "debt"), so a full bucket is the same as no entry
//! and is dropped; at most `max_sources` buckets are kept, and when that many sources are all
//! mid-refill a new one is refused rather than evicting a bucket an attacker could then reset.
//!
//! Pure: no clock and no I/O (the caller passes `now`), so every branch is tested without a
//! network or a sleep.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The shape of a per-source token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// Attempts a source may make at once.
    pub burst: u32,
    /// How often the bucket gains one attempt back.
    pub refill_every: Duration,
    /// Most sources tracked at once (each costs about 64 bytes).
    pub max_sources: usize,
}

impl RatePolicy {
    /// The most refill time a bucket can owe: a whole burst.
    fn capacity(&self) -> Duration {
        self.refill_every.saturating_mul(self.burst)
    }
}

/// Which bucket an address draws from.
///
/// An IPv6 host usually holds a whole /64, so keying by full address would let one host rotate
/// through 2^64 buckets; its /64 prefix is the source instead. An IPv4-mapped IPv6 address (what a
/// dual-stack socket reports for an IPv4 client) counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    Self::V6Prefix(
                        (u64::from(a) << 48)
                            | (u64::from(b) << 32)
                            | (u64::from(c) << 16)
                            | u64::from(d),
                    )
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => write!(f, "{v4}"),
            Self::V6Prefix(prefix) => {
                let high = u128::from(*prefix) << 64;
                write!(f, "{}/64", Ipv6Addr::from(high))
            }
        }
    }
}

/// Why an attempt was refused, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateRefusal {
    /// This source used its burst; the next attempt is free after `retry_in`.
    #[error("too many attempts from {from}; retry in {retry_in:?}")]
    TooFast { from: Source, retry_in: Duration },
    /// `max` other sources are all mid-refill; the first bucket frees after `retry_in`.
    #[error("attempts are coming from more than {max} sources at once; retry in {retry_in:?}")]
    TooManySources { max: usize, retry_in: Duration },
}

/// A bucket's refill debt as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    debt: Duration,
    at: Instant,
}

impl Bucket {
    /// The debt left at `now`.
    fn debt_at(&self, now: Instant) -> Duration {
        self.debt
            .saturating_sub(now.saturating_duration_since(self.at))
    }
}

/// Token buckets of every source seen lately.
#[derive(Debug)]
pub(super) struct SourceRateLimit {
    policy: RatePolicy,
    buckets: HashMap<Source, Bucket>,
}

impl SourceRateLimit {
    pub fn new(policy: RatePolicy) -> Self {
        Self {
            policy,
            buckets: HashMap::new(),
        }
    }

    /// Takes one attempt from the bucket of `ip` at `now`, or says when one will be free.
    pub fn try_acquire(&mut self, ip: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        let from = Source::of(ip);
        if !self.buckets.contains_key(&from) && self.buckets.len() >= self.policy.max_sources {
            self.buckets
                .retain(|_, bucket| !bucket.debt_at(now).is_zero());
            if self.buckets.len() >= self.policy.max_sources {
                let retry_in = self
                    .buckets
                    .values()
                    .map(|bucket| bucket.debt_at(now))
                    .min()
                    .unwrap_or_default();
                return Err(RateRefusal::TooManySources {
                    max: self.policy.max_sources,
                    retry_in,
                });
            }
        }
        let debt = self
            .buckets
            .get(&from)
            .map_or(Duration::ZERO, |bucket| bucket.debt_at(now));
        let owed = debt.saturating_add(self.policy.refill_every);
        let capacity = self.policy.capacity();
        if owed > capacity {
            return Err(RateRefusal::TooFast {
                from,
                retry_in: owed.saturating_sub(capacity),
            });
        }
        self.buckets.insert(
            from,
            Bucket {
                debt: owed,
                at: now,
            },
        );
        Ok(())
    }

    /// How many sources are tracked (a full bucket may linger until the table fills).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RatePolicy = RatePolicy {
        burst: 3,
        refill_every: Duration::from_secs(1),
        max_sources: 4,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_source_gets_its_burst_then_waits_one_refill() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.try_acquire(ip("10.0.0.1"), t0), Ok(()));
        }
        assert_eq!(
            limit.try_acquire(ip("10.0.0.1"), t0),
            Err(RateRefusal::TooFast {
                from: Source::V4(Ipv4Addr::new(10, 0, 0, 1)),
                retry_in: secs(1)
            })
        );
    }

    #[test]
    fn the_wait_shrinks_and_one_refill_buys_one_attempt() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        for _ in 0..3 {
            limit.try_acquire(ip("10.0.0.1"), t0).unwrap();
        }
        let refused = limit.try_acquire(ip("10.0.0.1"), t0 + Duration::from_millis(400));
        assert!(
            matches!(refused, Err(RateRefusal::TooFast { retry_in, .. }) if retry_in == Duration::from_millis(600)),
            "{refused:?}"
        );
        assert_eq!(limit.try_acquire(ip("10.0.0.1"), t0 + secs(1)), Ok(()));
        assert!(limit.try_acquire(ip("10.0.0.1"), t0 + secs(1)).is_err());
    }

    #[test]
    fn refused_attempts_cost_nothing() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        for _ in 0..3 {
            limit.try_acquire(ip("10.0.0.1"), t0).unwrap();
        }
        for _ in 0..100 {
            assert!(limit.try_acquire(ip("10.0.0.1"), t0).is_err());
        }
        assert_eq!(limit.try_acquire(ip("10.0.0.1"), t0 + secs(1)), Ok(()));
    }

    #[test]
    fn an_idle_source_gets_a_full_burst_back_but_no_more() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        limit.try_acquire(ip("10.0.0.1"), t0).unwrap();
        let later = t0 + secs(3600);
        for _ in 0..3 {
            assert_eq!(limit.try_acquire(ip("10.0.0.1"), later), Ok(()));
        }
        assert!(limit.try_acquire(ip("10.0.0.1"), later).is_err());
    }

    #[test]
    fn sources_are_limited_independently() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        for _ in 0..3 {
            limit.try_acquire(ip("10.0.0.1"), t0).unwrap();
        }
        assert!(limit.try_acquire(ip("10.0.0.1"), t0).is_err());
        assert_eq!(limit.try_acquire(ip("10.0.0.2"), t0), Ok(()));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"] {
            limit.try_acquire(ip(host), t0).unwrap();
        }
        let refused = limit.try_acquire(ip("2001:db8:1:2::77"), t0).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "too many attempts from 2001:db8:1:2::/64; retry in 1s"
        );
        assert_eq!(limit.try_acquire(ip("2001:db8:1:3::1"), t0), Ok(()));
    }

    #[test]
    fn an_ipv4_mapped_address_shares_the_ipv4_bucket() {
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        assert_eq!(Source::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
    }

    #[test]
    fn a_full_table_of_busy_sources_refuses_a_new_one_until_the_first_frees() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        for (i, n) in [1, 2, 3, 4].into_iter().enumerate() {
            // Staggered, so the first bucket frees first.
            let at = t0 + Duration::from_millis(100 * i as u64);
            limit.try_acquire(ip(&format!("10.0.0.{n}")), at).unwrap();
        }
        let at = t0 + Duration::from_millis(300);
        assert_eq!(
            limit.try_acquire(ip("10.0.0.9"), at),
            Err(RateRefusal::TooManySources {
                max: 4,
                retry_in: Duration::from_millis(700)
            })
        );
        // Sources already tracked keep their buckets.
        assert_eq!(limit.try_acquire(ip("10.0.0.2"), at), Ok(()));
        // Once the first bucket is full again, its place goes to the newcomer.
        assert_eq!(limit.try_acquire(ip("10.0.0.9"), t0 + secs(1)), Ok(()));
        assert!(limit.tracked() <= POLICY.max_sources);
    }

    #[test]
    fn memory_stays_bounded_under_a_many_source_flood() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now();
        let mut admitted = 0;
        for n in 0..1000u32 {
            let at = t0 + Duration::from_millis(u64::from(n));
            if limit
                .try_acquire(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), at)
                .is_ok()
            {
                admitted += 1;
            }
            assert!(limit.tracked() <= POLICY.max_sources);
        }
        // Each bucket frees a second after its one attempt, so about four sources a second pass.
        assert!((4..=8).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_clock_reading_before_the_last_attempt_counts_as_no_time_passed() {
        let mut limit = SourceRateLimit::new(POLICY);
        let t0 = Instant::now() + secs(10);
        for _ in 0..3 {
            limit.try_acquire(ip("10.0.0.1"), t0).unwrap();
        }
        assert!(limit.try_acquire(ip("10.0.0.1"), t0 - secs(5)).is_err());
    }

    #[test]
    fn the_refusal_says_who_and_how_long() {
        let refusal = RateRefusal::TooFast {
            from: Source::of(ip("203.0.113.5")),
            retry_in: Duration::from_millis(250),
        };
        assert_eq!(
            refusal.to_string(),
            "too many attempts from 203.0.113.5; retry in 250ms"
        );
    }
}
