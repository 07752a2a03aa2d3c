//! The ledger: what building and keeping each function cost, what it is worth, and the ROI.
//!
//! Two kinds of record live in the node's redb store and survive restarts:
//! - [`RunRecord`]: one Chef pipeline run — its stages and their times, model tokens and their
//!   cost, compute spent validating and testing, repair rounds, tests passed, the outcome, and the
//!   baseline hours the recipe declares a person would have needed;
//! - [`MaintenanceEvent`]: a rollback, redeploy or repair after deployment.
//!
//! [`roi()`] turns them, the invocation statistics of the mesh ([`UsageInputs`]) and the configured
//! [`Rates`] into a [`Roi`]: every cost and value line with its basis (measured or declared) and
//! a note of where the figures came from, and `ROI = (Value − Cost) / Cost`.
//!
//! The ledger is local to a node: the node that runs the Chef records its runs. Invocation
//! statistics are mesh-wide.

mod rates;
mod roi;

use std::sync::{Arc, Weak};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use rates::{ModelPrice, ROI_CONFIG_FILE, Rate, RateSource, Rates, RatesError};
pub use roi::{
    Breakdown, FunctionInputs, Line, Metric, Quantity, Roi, RoiInputs, SECONDS_PER_MONTH,
    StoredArtifact, UsageInputs, roi,
};

use klf_store::{Store, StoreError, off_worker};

/// Run records by run id (JSON).
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_runs");
/// Maintenance events by sequence number (JSON).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_events");

/// Whether a figure was measured by the mesh or declared by someone (a recipe, a manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Observed: timed, counted or reported by a provider.
    Measured,
    /// Stated: by a recipe, a manifest's `[value]`, or a person.
    Declared,
}

impl Basis {
    /// `M` or `D`, for tables.
    pub fn letter(self) -> char {
        match self {
            Self::Measured => 'M',
            Self::Declared => 'D',
        }
    }

    /// Measured only when both are.
    pub fn and(self, other: Self) -> Self {
        if self == Self::Measured && other == Self::Measured {
            Self::Measured
        } else {
            Self::Declared
        }
    }
}

/// A figure with its basis and a short note of where it came from. In costs and values the unit
/// is USD; elsewhere the field's name says the unit (`baseline_hours`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Amount {
    pub value: f64,
    pub basis: Basis,
    pub note: String,
}

impl Amount {
    pub fn measured(value: f64, note: impl Into<String>) -> Self {
        Self {
            value,
            basis: Basis::Measured,
            note: note.into(),
        }
    }

    pub fn declared(value: f64, note: impl Into<String>) -> Self {
        Self {
            value,
            basis: Basis::Declared,
            note: note.into(),
        }
    }

    /// Nothing, measured (a provider that used no tokens, say).
    pub fn zero(note: impl Into<String>) -> Self {
        Self::measured(0.0, note)
    }
}

/// How a pipeline run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// A function was built, passed its tests and was deployed.
    Deployed,
    /// A function was built and passed its tests, but deployment was not asked for.
    Built,
    /// The run ended in the failed state (validation, tests, or repairs exhausted).
    Failed,
    /// No recipe fitted the request; nothing was built.
    NoMatch,
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deployed => "deployed",
            Self::Built => "built",
            Self::Failed => "failed",
            Self::NoMatch => "no-match",
        })
    }
}

/// One stage of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// `interpret`, `generate`, `validate`, `test`, `deploy`, …
    pub stage: String,
    /// Wall time of the stage, in milliseconds.
    pub ms: u64,
    pub ok: bool,
    #[serde(default)]
    pub note: String,
}

/// One Chef pipeline run, as the Chef records it with [`Ledger::record_run`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique per run; recording the same id again replaces the record.
    pub run_id: String,
    /// The function built (None when nothing was: no match, or a failure before naming it).
    pub function: Option<String>,
    pub version: Option<String>,
    /// The request as the user wrote it.
    pub request: String,
    /// `offline`, `openai`, `replay`.
    pub provider: String,
    pub outcome: RunOutcome,
    pub started_unix_ms: u64,
    /// The stages in order; their times add up to the run's development time.
    pub stages: Vec<StageRecord>,
    pub model_tokens_in: u64,
    pub model_tokens_out: u64,
    /// Tokens × price ([`ModelPrice::cost`]); zero for a provider without tokens.
    pub model_cost: Amount,
    /// Execution time spent in the sandbox validating and testing, in microseconds.
    #[serde(default)]
    pub compute_us: u64,
    /// Repair rounds the generator needed.
    pub repairs: u32,
    pub tests_passed: u32,
    pub tests_total: u32,
    /// Hours a person would need to build the same function, as the recipe declares it.
    pub baseline_hours: Amount,
}

impl RunRecord {
    /// Development time: the stages' wall times added up (the pipeline runs them one by one).
    pub fn wall_ms(&self) -> u64 {
        self.stages.iter().map(|s| s.ms).sum()
    }

    fn check(&self) -> Result<(), LedgerError> {
        let invalid = |message: String| {
            Err(LedgerError::Invalid {
                run_id: self.run_id.clone(),
                message,
            })
        };
        if self.run_id.is_empty() {
            return invalid("the run id is empty".into());
        }
        if self.tests_passed > self.tests_total {
            return invalid(format!(
                "{} tests passed of {} run",
                self.tests_passed, self.tests_total
            ));
        }
        for (field, amount) in [
            ("model_cost", &self.model_cost),
            ("baseline_hours", &self.baseline_hours),
        ] {
            if !amount.value.is_finite() || amount.value < 0.0 {
                return invalid(format!(
                    "{field} is {}, not a finite non-negative number",
                    amount.value
                ));
            }
        }
        if self.outcome == RunOutcome::Deployed && self.function.is_none() {
            return invalid("a deployed run must name its function".into());
        }
        Ok(())
    }
}

/// What kind of maintenance happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The Monitor (or a person) pinned an earlier version.
    Rollback,
    /// A version was deployed again (a new version of a function already serving, or a re-publish).
    Redeploy,
    /// A fix after deployment. Repair rounds inside a pipeline run are counted from
    /// [`RunRecord::repairs`] instead; do not record them twice.
    Repair,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rollback => "rollback",
            Self::Redeploy => "redeploy",
            Self::Repair => "repair",
        })
    }
}

/// One maintenance event of a function, recorded with [`Ledger::record_event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceEvent {
    pub kind: EventKind,
    pub function: String,
    /// The version concerned (for a rollback, the version rolled back to).
    pub version: Option<String>,
    pub at_unix_ms: u64,
    /// Why, in a few words (the Monitor's reason for a rollback, say).
    #[serde(default)]
    pub note: String,
}

/// Ledger failures, with the store's or the codec's error as the source.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: {0}")]
    Store(#[from] StoreError),
    #[error("ledger: a stored record cannot be read ({0}); was it written by a newer klf?")]
    Corrupt(#[source] serde_json::Error),
    /// A record that cannot be written as JSON; nothing was stored.
    #[error("ledger: a record cannot be written as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("ledger: the node's store is closed (the node has stopped)")]
    Closed,
    #[error("ledger: run {run_id:?} is refused: {message}")]
    Invalid { run_id: String, message: String },
}

macro_rules! store_err {
    ($($t:ty),*) => { $( impl From<$t> for LedgerError { fn from(e: $t) -> Self { Self::Store(e.into()) } } )* };
}
store_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Run records and maintenance events on the node's store.
///
/// The ledger does not keep the store open: it works while the store's owner (a node's registry)
/// holds it, so a stopped node releases its data dir, and answers [`LedgerError::Closed`] after.
#[derive(Clone)]
pub struct Ledger {
    store: Weak<Store>,
}

impl Ledger {
    /// Opens the ledger's tables in `store` (creating them on first use).
    pub fn open(store: &Arc<Store>) -> Result<Self, LedgerError> {
        off_worker(|| {
            let txn = store.begin_write()?;
            {
                txn.open_table(RUNS)?;
                txn.open_table(EVENTS)?;
            }
            txn.commit()?;
            Ok::<_, LedgerError>(())
        })?;
        Ok(Self {
            store: Arc::downgrade(store),
        })
    }

    fn store(&self) -> Result<Arc<Store>, LedgerError> {
        self.store.upgrade().ok_or(LedgerError::Closed)
    }

    /// Records one pipeline run (replacing an earlier record with the same id).
    ///
    /// Synchronous for its callers, but the commit waits for the disk off the runtime worker
    /// ([`off_worker`]), as every write of the ledger does.
    pub fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        run.check()?;
        let bytes = serde_json::to_vec(run).map_err(LedgerError::Encode)?;
        let store = self.store()?;
        off_worker(|| {
            let txn = store.begin_write()?;
            {
                txn.open_table(RUNS)?
                    .insert(run.run_id.as_str(), bytes.as_slice())?;
            }
            txn.commit()?;
            Ok::<_, LedgerError>(())
        })?;
        tracing::debug!(run_id = %run.run_id, function = ?run.function, outcome = %run.outcome, "ledger: run recorded");
        Ok(())
    }

    /// One run by id.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, LedgerError> {
        let txn = self.store()?.database().begin_read()?;
        let table = txn.open_table(RUNS)?;
        table.get(run_id)?.map(|v| decode(v.value())).transpose()
    }

    /// The runs that built `function` (every run when `None`), oldest first.
    pub fn runs(&self, function: Option<&str>) -> Result<Vec<RunRecord>, LedgerError> {
        let txn = self.store()?.database().begin_read()?;
        let table = txn.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            let run: RunRecord = decode(v.value())?;
            if function.is_none() || run.function.as_deref() == function {
                out.push(run);
            }
        }
        out.sort_by(|a, b| (a.started_unix_ms, &a.run_id).cmp(&(b.started_unix_ms, &b.run_id)));
        Ok(out)
    }

    /// Records one maintenance event; returns its sequence number.
    pub fn record_event(&self, event: &MaintenanceEvent) -> Result<u64, LedgerError> {
        let bytes = serde_json::to_vec(event).map_err(LedgerError::Encode)?;
        let store = self.store()?;
        let seq = off_worker(|| {
            let txn = store.begin_write()?;
            let seq = {
                let mut table = txn.open_table(EVENTS)?;
                let next = table.last()?.map_or(1, |(k, _)| k.value() + 1);
                table.insert(next, bytes.as_slice())?;
                next
            };
            txn.commit()?;
            Ok::<_, LedgerError>(seq)
        })?;
        tracing::debug!(seq, kind = %event.kind, function = %event.function, "ledger: event recorded");
        Ok(seq)
    }

    /// The maintenance events of `function` (every event when `None`), in recording order.
    pub fn events(&self, function: Option<&str>) -> Result<Vec<MaintenanceEvent>, LedgerError> {
        let txn = self.store()?.database().begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            let event: MaintenanceEvent = decode(v.value())?;
            if function.is_none_or(|f| f == event.function) {
                out.push(event);
            }
        }
        Ok(out)
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(LedgerError::Corrupt)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deployed run of `function` lasting `wall_ms` over two stages.
    pub(crate) fn run(id: &str, function: Option<&str>, started: u64, wall_ms: u64) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            function: function.map(str::to_string),
            version: function.map(|_| "1.0.0".to_string()),
            request: "Analyze market data and find opportunities".into(),
            provider: "offline".into(),
            outcome: if function.is_some() {
                RunOutcome::Deployed
            } else {
                RunOutcome::NoMatch
            },
            started_unix_ms: started,
            stages: vec![
                StageRecord {
                    stage: "interpret".into(),
                    ms: wall_ms / 2,
                    ok: true,
                    note: String::new(),
                },
                StageRecord {
                    stage: "generate".into(),
                    ms: wall_ms - wall_ms / 2,
                    ok: true,
                    note: String::new(),
                },
            ],
            model_tokens_in: 0,
            model_tokens_out: 0,
            model_cost: Amount::zero("offline provider: no tokens"),
            compute_us: 0,
            repairs: 0,
            tests_passed: 4,
            tests_total: 4,
            baseline_hours: Amount::declared(8.0, "recipe market-analysis"),
        }
    }

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn runs_and_events_survive_a_reopen_of_the_store() {
        let dir = ok(tempfile::tempdir());
        let path = dir.path().join("store.redb");
        {
            let store = Arc::new(ok(Store::open(&path)));
            let ledger = ok(Ledger::open(&store));
            ok(ledger.record_run(&run("r2", Some("b"), 20, 1000)));
            ok(ledger.record_run(&run("r1", Some("a"), 10, 3000)));
            ok(ledger.record_run(&run("r3", None, 30, 500)));
            let event = MaintenanceEvent {
                kind: EventKind::Rollback,
                function: "a".into(),
                version: Some("1.0.0".into()),
                at_unix_ms: 40,
                note: "error rate 40% on 1.1.0".into(),
            };
            assert_eq!(ok(ledger.record_event(&event)), 1);
            assert_eq!(
                ok(ledger.record_event(&MaintenanceEvent {
                    kind: EventKind::Redeploy,
                    function: "b".into(),
                    ..event
                })),
                2
            );
        }
        let store = Arc::new(ok(Store::open(&path)));
        let ledger = ok(Ledger::open(&store));
        let all: Vec<String> = ok(ledger.runs(None))
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(all, ["r1", "r2", "r3"], "oldest first");
        let a = ok(ledger.runs(Some("a")));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0], run("r1", Some("a"), 10, 3000));
        assert_eq!(a[0].wall_ms(), 3000);
        assert_eq!(
            ok(ledger.run("r3")).map(|r| r.outcome),
            Some(RunOutcome::NoMatch)
        );
        assert_eq!(ok(ledger.run("nope")), None);
        let events = ok(ledger.events(Some("a")));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Rollback);
        assert_eq!(ok(ledger.events(None)).len(), 2);
        // The sequence continues after the reopen.
        assert_eq!(
            ok(ledger.record_event(&MaintenanceEvent {
                kind: EventKind::Repair,
                function: "a".into(),
                version: None,
                at_unix_ms: 50,
                note: String::new(),
            })),
            3
        );
    }

    #[test]
    fn recording_a_run_again_replaces_it() {
        let dir = ok(tempfile::tempdir());
        let store = Arc::new(ok(Store::open(&dir.path().join("s.redb"))));
        let ledger = ok(Ledger::open(&store));
        ok(ledger.record_run(&run("r1", Some("a"), 10, 1000)));
        let mut again = run("r1", Some("a"), 10, 1000);
        again.repairs = 2;
        ok(ledger.record_run(&again));
        assert_eq!(ok(ledger.runs(None)), vec![again]);
        // The ledger does not keep the store open.
        drop(store);
        assert!(matches!(ledger.runs(None), Err(LedgerError::Closed)));
    }

    #[test]
    fn inconsistent_runs_are_refused_with_the_reason() {
        let dir = ok(tempfile::tempdir());
        let store = Arc::new(ok(Store::open(&dir.path().join("s.redb"))));
        let ledger = ok(Ledger::open(&store));
        let mut bad = run("r1", Some("a"), 10, 1000);
        bad.tests_passed = 5;
        let message = ledger.record_run(&bad).err().map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some("ledger: run \"r1\" is refused: 5 tests passed of 4 run")
        );
        let mut bad = run("r2", Some("a"), 10, 1000);
        bad.baseline_hours.value = f64::NAN;
        assert!(ledger.record_run(&bad).is_err());
        let mut bad = run("r3", None, 10, 1000);
        bad.outcome = RunOutcome::Deployed;
        assert!(ledger.record_run(&bad).is_err());
        assert!(ledger.record_run(&run("", None, 1, 1)).is_err());
        assert!(ok(ledger.runs(None)).is_empty());
    }

    #[test]
    fn run_records_are_json_with_kebab_case_outcomes() {
        let json = ok(serde_json::to_value(run("r1", None, 1, 2)));
        assert_eq!(json["outcome"], "no-match");
        assert_eq!(json["baseline_hours"]["basis"], "declared");
        assert_eq!(json["model_cost"]["basis"], "measured");
    }
}
