//! The Monitor: watches every deployed function's error rate and latency across the mesh and
//! rolls a misbehaving new version back to the last good one.
//!
//! Every `interval` the Monitor reads the mesh-wide statistics ([`FunctionStats`], gathered from
//! every alive member) and, per deployed function:
//!
//! - remembers as **good** every version that has served at least `good_min_calls` calls with an
//!   error rate of at most `good_max_error_rate` (and, with a latency budget, a p99 within it);
//! - finds the **served** version **bad** when, over at least `bad_min_recent_calls` calls of the
//!   last 30 s, its error rate exceeds `bad_error_rate`, or its p99 exceeds `latency_budget`;
//! - then rolls back to the highest good version *older* than the served one (through
//!   [`Watched::rollback`], i.e. `Node::rollback`: a pinned deployment record, replicated), logs it
//!   and records a [`MonitorEvent`]. A version found bad is never again taken as good. Without an
//!   older good version it only logs (once) that it cannot help.
//!
//! A function with a **canary** (a new version one node serves beside the stable one, see
//! `klf_registry::Canary`) is judged on its own: once the canary has served `canary_min_calls`
//! calls it is **promoted** (served everywhere) when its error rate is at most the stable
//! version's plus `canary_tolerance` and its p99 within the latency budget, and **rolled back**
//! otherwise ([`decide_canary`], [`Watched::end_canary`]). Until then it waits: a canary is never
//! promoted on too few calls.
//!
//! Every node runs a Monitor, but for each function only one acts: the first node of the
//! function's rendezvous ranking over the alive members (the same hashing that places replicas),
//! so a rollback happens once, and another node takes over when that one dies.

use futures_util::future::BoxFuture;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use semver::Version;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use klf_router::FunctionStats;

/// The Monitor's thresholds. Defaults: every 5 s; good after 20 calls with at most 10% errors;
/// bad above 50% errors over at least 10 calls of the last 30 s; no latency budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// Whether the node runs a Monitor at all.
    pub enabled: bool,
    /// How often it looks.
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Calls a version must have served to count as good …
    pub good_min_calls: u64,
    /// … with at most this share of them failed.
    pub good_max_error_rate: f64,
    /// Recent calls (last 30 s) needed before a version can be judged bad …
    pub bad_min_recent_calls: u64,
    /// … when more than this share of them failed.
    pub bad_error_rate: f64,
    /// A p99 above this is bad too (`None`: latency is not judged).
    #[serde(with = "opt_millis")]
    pub latency_budget: Option<Duration>,
    /// Calls a canary must serve before it is promoted or rolled back.
    pub canary_min_calls: u64,
    /// How much higher than the stable version's a canary's error rate may be and still be
    /// promoted (0.1: ten points).
    pub canary_tolerance: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5),
            good_min_calls: 20,
            good_max_error_rate: 0.1,
            bad_min_recent_calls: 10,
            bad_error_rate: 0.5,
            latency_budget: None,
            canary_min_calls: 10,
            canary_tolerance: 0.1,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
    }
}

/// A rollback (or a canary's promotion) the Monitor made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorEvent {
    /// `rollback` (of a served version), `canary-promoted` or `canary-rolled-back`.
    #[serde(default = "rollback_action")]
    pub action: String,
    pub function: String,
    /// The version found bad.
    pub from_version: String,
    /// The good version now served.
    pub to_version: String,
    /// Why, in words.
    pub reason: String,
    pub recent_calls: u64,
    pub recent_errors: u64,
    pub p99_us: u64,
    pub at_unix_ms: u64,
}

fn rollback_action() -> String {
    "rollback".into()
}

/// One deployed function as the Monitor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub name: String,
    /// The version the deployment serves now.
    pub served: Version,
    /// Every live version.
    pub published: Vec<Version>,
    /// Whether this node is the one that acts for this function.
    pub responsible: bool,
    /// The version on trial beside `served`, if a canary runs.
    pub canary: Option<Version>,
}

/// What to do with a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryVerdict {
    /// Not enough calls yet.
    Wait,
    Promote {
        reason: String,
    },
    RollBack {
        reason: String,
    },
}

/// Judges a canary from the stats of its version and of the stable one.
pub fn decide_canary(
    config: &MonitorConfig,
    canary: &FunctionStats,
    stable: Option<&FunctionStats>,
) -> CanaryVerdict {
    if canary.calls < config.canary_min_calls {
        return CanaryVerdict::Wait;
    }
    let stable_rate = stable.map_or(0.0, FunctionStats::error_rate);
    let rate = canary.error_rate();
    let shown = |r: f64| format!("{:.0}%", r * 100.0);
    if rate > stable_rate + config.canary_tolerance || rate > config.bad_error_rate {
        return CanaryVerdict::RollBack {
            reason: format!(
                "{} of {} canary calls failed ({}), against {} on the stable version",
                canary.errors,
                canary.calls,
                shown(rate),
                shown(stable_rate)
            ),
        };
    }
    if let Some(budget) = config.latency_budget
        && canary.p99_us > budget.as_micros() as u64
    {
        return CanaryVerdict::RollBack {
            reason: format!(
                "canary p99 {} ms exceeds the budget of {} ms",
                canary.p99_us / 1000,
                budget.as_millis()
            ),
        };
    }
    CanaryVerdict::Promote {
        reason: format!(
            "{} canary calls, {} failed ({}; stable {})",
            canary.calls,
            canary.errors,
            shown(rate),
            shown(stable_rate)
        ),
    }
}

/// What the Monitor watches and acts on (the node implements it; tests use fakes).
pub trait Watched: Send + Sync + 'static {
    /// Deployed functions, from the catalog.
    fn deployed(&self) -> Vec<Deployed>;
    /// Mesh-wide statistics per function@version.
    fn mesh_stats(&self) -> BoxFuture<'static, Vec<FunctionStats>>;
    /// Pins the deployment of `name` to `version`.
    fn rollback(&self, name: String, version: Version) -> BoxFuture<'static, Result<(), String>>;
    /// Ends the canary of `name`, promoting it or not.
    fn end_canary(&self, name: String, promote: bool) -> BoxFuture<'static, Result<(), String>>;
}

/// What the Monitor remembers about one function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// Versions seen good (and not bad since).
    pub good: BTreeSet<Version>,
    /// Versions found bad.
    pub bad: BTreeSet<Version>,
    /// The served version the Monitor already said it cannot roll back.
    pub stuck: Option<Version>,
}

/// A rollback to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub to: Version,
    pub reason: String,
}

/// The decision for one function: updates `memory` from `stats` (this function's versions) and
/// says whether to roll back from `deployed.served`, and to what.
pub fn decide(
    config: &MonitorConfig,
    memory: &mut Memory,
    deployed: &Deployed,
    stats: &[&FunctionStats],
) -> Option<Decision> {
    let within_budget = |s: &FunctionStats| {
        config
            .latency_budget
            .is_none_or(|b| s.p99_us <= b.as_micros() as u64)
    };
    for s in stats {
        let Ok(version) = Version::parse(&s.version) else {
            continue;
        };
        if !memory.bad.contains(&version)
            && s.calls >= config.good_min_calls
            && s.error_rate() <= config.good_max_error_rate
            && within_budget(s)
        {
            memory.good.insert(version);
        }
    }
    let served = stats
        .iter()
        .find(|s| Version::parse(&s.version).is_ok_and(|v| v == deployed.served))?;
    if served.recent_calls < config.bad_min_recent_calls {
        return None;
    }
    let reason = if served.recent_error_rate() > config.bad_error_rate {
        format!(
            "{} of the last {} calls failed ({:.0}% > {:.0}%)",
            served.recent_errors,
            served.recent_calls,
            served.recent_error_rate() * 100.0,
            config.bad_error_rate * 100.0
        )
    } else if let Some(budget) = config.latency_budget
        && !within_budget(served)
    {
        format!(
            "p99 latency {} ms exceeds the budget of {} ms",
            served.p99_us / 1000,
            budget.as_millis()
        )
    } else {
        return None;
    };
    memory.good.remove(&deployed.served);
    memory.bad.insert(deployed.served.clone());
    let target = memory
        .good
        .range(..&deployed.served)
        .rev()
        .find(|v| deployed.published.contains(v))
        .cloned();
    match target {
        Some(to) => {
            memory.stuck = None;
            Some(Decision { to, reason })
        }
        None => {
            if memory.stuck.as_ref() != Some(&deployed.served) {
                warn!(
                    function = %deployed.name,
                    version = %deployed.served,
                    %reason,
                    "the served version misbehaves, but no older version is known good: nothing to roll back to"
                );
                memory.stuck = Some(deployed.served.clone());
            }
            None
        }
    }
}

/// The Monitor's messages.
pub enum MonitorMsg {
    /// Look at the stats now (sent every `interval`).
    Tick,
    /// The rollbacks made so far (oldest first).
    Events(RpcReplyPort<Vec<MonitorEvent>>),
}

/// The Monitor actor.
pub struct Monitor;

/// Its arguments.
pub struct MonitorArgs {
    pub config: MonitorConfig,
    pub watched: Arc<dyn Watched>,
}

/// Its state.
pub struct MonitorState {
    config: MonitorConfig,
    watched: Arc<dyn Watched>,
    memory: HashMap<String, Memory>,
    events: Vec<MonitorEvent>,
    /// When the last look ended: ticks that queued up behind a slow look are skipped.
    last_look: Option<Instant>,
}

/// Events kept (the oldest are dropped beyond this).
const MAX_EVENTS: usize = 1000;

impl Actor for Monitor {
    type Msg = MonitorMsg;
    type State = MonitorState;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MonitorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args.config.enabled {
            myself.send_interval(args.config.interval, || MonitorMsg::Tick);
        }
        Ok(MonitorState {
            config: args.config,
            watched: args.watched,
            memory: HashMap::new(),
            events: Vec::new(),
            last_look: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MonitorMsg::Tick => {
                if state
                    .last_look
                    .is_none_or(|at| at.elapsed() >= state.config.interval / 2)
                {
                    state.tick().await;
                    state.last_look = Some(Instant::now());
                }
            }
            MonitorMsg::Events(reply) => {
                let _ = reply.send(state.events.clone());
            }
        }
        Ok(())
    }
}

impl MonitorState {
    async fn tick(&mut self) {
        let deployed: Vec<Deployed> = self
            .watched
            .deployed()
            .into_iter()
            .filter(|d| d.responsible)
            .collect();
        if deployed.is_empty() {
            return;
        }
        let stats = self.watched.mesh_stats().await;
        for function in deployed {
            let own: Vec<&FunctionStats> = stats
                .iter()
                .filter(|s| s.function == function.name)
                .collect();
            if let Some(canary) = &function.canary {
                self.judge_canary(&function, canary, &own).await;
                continue;
            }
            let memory = self.memory.entry(function.name.clone()).or_default();
            let Some(decision) = decide(&self.config, memory, &function, &own) else {
                continue;
            };
            let from = function.served.to_string();
            let served = own.iter().find(|s| s.version == from);
            match self
                .watched
                .rollback(function.name.clone(), decision.to.clone())
                .await
            {
                Ok(()) => {
                    info!(
                        function = %function.name,
                        from = %from,
                        to = %decision.to,
                        reason = %decision.reason,
                        "monitor rolled back"
                    );
                    if self.events.len() >= MAX_EVENTS {
                        self.events.remove(0);
                    }
                    self.events.push(MonitorEvent {
                        action: rollback_action(),
                        function: function.name.clone(),
                        from_version: from,
                        to_version: decision.to.to_string(),
                        reason: decision.reason,
                        recent_calls: served.map_or(0, |s| s.recent_calls),
                        recent_errors: served.map_or(0, |s| s.recent_errors),
                        p99_us: served.map_or(0, |s| s.p99_us),
                        at_unix_ms: klf_proto::unix_ms(),
                    });
                }
                Err(error) => {
                    // Try again on the next tick.
                    if let Some(memory) = self.memory.get_mut(&function.name) {
                        memory.bad.remove(&function.served);
                    }
                    warn!(function = %function.name, to = %decision.to, %error, "monitor could not roll back");
                }
            }
        }
        debug!(functions = self.memory.len(), "monitor looked");
    }

    async fn judge_canary(
        &mut self,
        function: &Deployed,
        canary: &Version,
        own: &[&FunctionStats],
    ) {
        let of = |v: &Version| own.iter().find(|s| s.version == v.to_string()).copied();
        let Some(trial) = of(canary) else {
            return;
        };
        let (promote, reason) = match decide_canary(&self.config, trial, of(&function.served)) {
            CanaryVerdict::Wait => return,
            CanaryVerdict::Promote { reason } => (true, reason),
            CanaryVerdict::RollBack { reason } => (false, reason),
        };
        match self
            .watched
            .end_canary(function.name.clone(), promote)
            .await
        {
            Ok(()) => {
                let (action, from, to) = if promote {
                    ("canary-promoted", &function.served, canary)
                } else {
                    ("canary-rolled-back", canary, &function.served)
                };
                info!(function = %function.name, %from, %to, %reason, action, "monitor ended a canary");
                let memory = self.memory.entry(function.name.clone()).or_default();
                if promote {
                    memory.good.insert(canary.clone());
                } else {
                    memory.bad.insert(canary.clone());
                }
                if self.events.len() >= MAX_EVENTS {
                    self.events.remove(0);
                }
                self.events.push(MonitorEvent {
                    action: action.into(),
                    function: function.name.clone(),
                    from_version: from.to_string(),
                    to_version: to.to_string(),
                    reason,
                    recent_calls: trial.recent_calls,
                    recent_errors: trial.recent_errors,
                    p99_us: trial.p99_us,
                    at_unix_ms: klf_proto::unix_ms(),
                });
            }
            Err(error) => {
                warn!(function = %function.name, %canary, %error, "monitor could not end the canary; next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn stats(
        version: &str,
        calls: u64,
        errors: u64,
        recent: (u64, u64),
        p99_ms: u64,
    ) -> FunctionStats {
        FunctionStats {
            function: "f".into(),
            version: version.into(),
            calls,
            errors,
            error_kinds: Default::default(),
            p50_us: 1000,
            p99_us: p99_ms * 1000,
            cpu_us: 0,
            recent_calls: recent.0,
            recent_errors: recent.1,
            ..Default::default()
        }
    }

    fn deployed(served: &str) -> Deployed {
        Deployed {
            name: "f".into(),
            served: Version::parse(served).unwrap(),
            published: ["1.0.0", "1.1.0", "2.0.0"]
                .iter()
                .map(|v| Version::parse(v).unwrap())
                .collect(),
            responsible: true,
            canary: None,
        }
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn a_new_version_with_a_high_recent_error_rate_rolls_back_to_the_last_good_one() {
        let config = MonitorConfig::default();
        let mut memory = Memory::default();
        // v1 served well; v2 is deployed and starts failing.
        let v1 = stats("1.0.0", 50, 1, (0, 0), 5);
        let early = stats("2.0.0", 5, 4, (5, 4), 5);
        assert_eq!(
            decide(&config, &mut memory, &deployed("2.0.0"), &[&v1, &early]),
            None,
            "too few calls to judge"
        );
        assert!(memory.good.contains(&v("1.0.0")));
        let bad = stats("2.0.0", 12, 9, (12, 9), 5);
        let decision = decide(&config, &mut memory, &deployed("2.0.0"), &[&v1, &bad]).unwrap();
        assert_eq!(decision.to, v("1.0.0"));
        assert!(
            decision.reason.contains("9 of the last 12 calls failed"),
            "{}",
            decision.reason
        );
        assert!(memory.bad.contains(&v("2.0.0")));
        // Once v1 serves again, nothing more happens; v2 is never taken as good.
        let v2_later = stats("2.0.0", 40, 9, (12, 9), 5);
        assert_eq!(
            decide(&config, &mut memory, &deployed("1.0.0"), &[&v1, &v2_later]),
            None
        );
        let v2_healed = stats("2.0.0", 400, 9, (0, 0), 5);
        decide(&config, &mut memory, &deployed("1.0.0"), &[&v1, &v2_healed]);
        assert!(!memory.good.contains(&v("2.0.0")));
    }

    #[test]
    fn healthy_or_unproven_versions_are_left_alone() {
        let config = MonitorConfig::default();
        let mut memory = Memory::default();
        // Half the calls failing is not more than half.
        let half = stats("2.0.0", 20, 10, (20, 10), 5);
        let v1 = stats("1.0.0", 50, 0, (0, 0), 5);
        assert_eq!(
            decide(&config, &mut memory, &deployed("2.0.0"), &[&v1, &half]),
            None
        );
        // Not enough calls ever: v1 is not known good, so a bad v2 has nowhere to go.
        let mut memory = Memory::default();
        let unproven = stats("1.0.0", 19, 0, (0, 0), 5);
        let bad = stats("2.0.0", 30, 30, (30, 30), 5);
        assert_eq!(
            decide(&config, &mut memory, &deployed("2.0.0"), &[&unproven, &bad]),
            None
        );
        assert_eq!(memory.stuck, Some(v("2.0.0")));
        // A version with too many errors overall is not good either.
        let mut memory = Memory::default();
        let flaky = stats("1.0.0", 100, 11, (0, 0), 5);
        assert_eq!(
            decide(&config, &mut memory, &deployed("2.0.0"), &[&flaky, &bad]),
            None
        );
        // No stats for the served version: nothing to judge.
        assert_eq!(
            decide(&config, &mut memory, &deployed("2.0.0"), &[&flaky]),
            None
        );
    }

    #[test]
    fn the_target_is_the_highest_good_version_older_than_the_served_one_and_still_published() {
        let config = MonitorConfig::default();
        let mut memory = Memory::default();
        let good = [
            stats("1.0.0", 50, 0, (0, 0), 5),
            stats("1.1.0", 50, 0, (0, 0), 5),
        ];
        let bad = stats("2.0.0", 30, 30, (30, 30), 5);
        let mut d = deployed("2.0.0");
        d.published.retain(|x| *x != v("1.1.0"));
        let decision = decide(&config, &mut memory, &d, &[&good[0], &good[1], &bad]).unwrap();
        assert_eq!(decision.to, v("1.0.0"), "1.1.0 is no longer published");
        // A bad older version pinned by hand is not "rolled forward".
        let mut memory = Memory::default();
        let old_bad = stats("1.0.0", 30, 30, (30, 30), 5);
        let newer_good = stats("2.0.0", 50, 0, (0, 0), 5);
        assert_eq!(
            decide(
                &config,
                &mut memory,
                &deployed("1.0.0"),
                &[&old_bad, &newer_good]
            ),
            None
        );
    }

    #[test]
    fn a_p99_over_the_latency_budget_is_bad_too() {
        let config = MonitorConfig {
            latency_budget: Some(Duration::from_millis(100)),
            ..MonitorConfig::default()
        };
        let mut memory = Memory::default();
        let v1 = stats("1.0.0", 50, 0, (0, 0), 20);
        let slow = stats("2.0.0", 30, 0, (30, 0), 900);
        let decision = decide(&config, &mut memory, &deployed("2.0.0"), &[&v1, &slow]).unwrap();
        assert_eq!(decision.to, v("1.0.0"));
        assert!(
            decision
                .reason
                .contains("p99 latency 900 ms exceeds the budget of 100 ms"),
            "{}",
            decision.reason
        );
        // Without a budget, latency alone is fine.
        let mut memory = Memory::default();
        assert_eq!(
            decide(
                &MonitorConfig::default(),
                &mut memory,
                &deployed("2.0.0"),
                &[&v1, &slow]
            ),
            None
        );
    }

    #[test]
    fn a_canary_waits_for_enough_calls_then_is_promoted_or_rolled_back() {
        let config = MonitorConfig::default();
        let stable = stats("1.0.0", 100, 2, (10, 0), 5);
        let few = stats("1.1.0", 5, 0, (5, 0), 5);
        assert_eq!(
            decide_canary(&config, &few, Some(&stable)),
            CanaryVerdict::Wait
        );
        let good = stats("1.1.0", 20, 1, (20, 1), 5);
        assert!(matches!(
            decide_canary(&config, &good, Some(&stable)),
            CanaryVerdict::Promote { reason } if reason.contains("20 canary calls, 1 failed")
        ));
        let bad = stats("1.1.0", 20, 8, (20, 8), 5);
        assert!(matches!(
            decide_canary(&config, &bad, Some(&stable)),
            CanaryVerdict::RollBack { reason } if reason.contains("8 of 20 canary calls failed (40%), against 2% on the stable version")
        ));
        let slow = MonitorConfig {
            latency_budget: Some(Duration::from_millis(50)),
            ..MonitorConfig::default()
        };
        assert!(matches!(
            decide_canary(&slow, &stats("1.1.0", 20, 0, (20, 0), 80), Some(&stable)),
            CanaryVerdict::RollBack { reason } if reason.contains("p99 80 ms exceeds the budget of 50 ms")
        ));
        // Without stable stats (it served nothing yet), the bad-error-rate line still holds.
        assert!(matches!(
            decide_canary(&config, &bad, None),
            CanaryVerdict::RollBack { .. }
        ));
    }

    #[test]
    fn the_config_reads_from_toml_with_defaults() {
        let config: MonitorConfig =
            toml::from_str("interval = 200\nbad_error_rate = 0.3\nlatency_budget = 250\n").unwrap();
        assert_eq!(config.interval, Duration::from_millis(200));
        assert_eq!(config.latency_budget, Some(Duration::from_millis(250)));
        assert_eq!(config.good_min_calls, 20);
        assert!((config.bad_error_rate - 0.3).abs() < 1e-9);
    }

    /// A function whose v2 fails: the actor rolls back once and records it.
    struct Fake {
        served: Mutex<Version>,
        rollbacks: Mutex<Vec<Version>>,
    }

    impl Watched for Fake {
        fn deployed(&self) -> Vec<Deployed> {
            let served = self.served.lock().unwrap().clone();
            vec![Deployed {
                served,
                ..deployed("2.0.0")
            }]
        }

        fn mesh_stats(&self) -> BoxFuture<'static, Vec<FunctionStats>> {
            Box::pin(async {
                vec![
                    stats("1.0.0", 50, 0, (0, 0), 5),
                    stats("2.0.0", 30, 25, (30, 25), 5),
                ]
            })
        }

        fn rollback(
            &self,
            _name: String,
            version: Version,
        ) -> BoxFuture<'static, Result<(), String>> {
            *self.served.lock().unwrap() = version.clone();
            self.rollbacks.lock().unwrap().push(version);
            Box::pin(async { Ok(()) })
        }

        fn end_canary(
            &self,
            _name: String,
            _promote: bool,
        ) -> BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Err("no canary here".to_string()) })
        }
    }

    #[tokio::test]
    async fn the_actor_rolls_back_once_and_lists_the_event() {
        let fake = Arc::new(Fake {
            served: Mutex::new(v("2.0.0")),
            rollbacks: Mutex::new(Vec::new()),
        });
        let (monitor, handle) = Actor::spawn(
            None,
            Monitor,
            MonitorArgs {
                config: MonitorConfig {
                    interval: Duration::from_millis(20),
                    ..MonitorConfig::default()
                },
                watched: fake.clone(),
            },
        )
        .await
        .unwrap();
        let mut events = Vec::new();
        for _ in 0..100 {
            events = ractor::call!(monitor, MonitorMsg::Events).unwrap();
            if !events.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (
                events[0].from_version.as_str(),
                events[0].to_version.as_str()
            ),
            ("2.0.0", "1.0.0")
        );
        assert_eq!((events[0].recent_calls, events[0].recent_errors), (30, 25));
        // More ticks change nothing: 1.0.0 serves and is fine.
        for _ in 0..5 {
            let _ = monitor.cast(MonitorMsg::Tick);
        }
        let events = ractor::call!(monitor, MonitorMsg::Events).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(*fake.rollbacks.lock().unwrap(), vec![v("1.0.0")]);
        monitor.stop(None);
        let _ = handle.await;
    }
}
