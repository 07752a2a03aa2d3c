//! The ROI of a mesh as one node sees it: gathers run records and maintenance events (this node's
//! ledger), the catalog (declared value per call, memory limits, artifacts) and invocation
//! statistics, and hands them to [`crate::ledger::roi`].

use std::collections::{BTreeMap, BTreeSet};

use crate::kitchen::Kitchen;
use crate::ledger::{
    FunctionInputs, LedgerError, Roi, RoiInputs, RunRecord, StoredArtifact, UsageInputs, roi,
};
use klf_router::stats::FunctionStats;

/// Why an ROI could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum RoiError {
    #[error(
        "no function named {0:?}: it is not in the catalog and the ledger has no run or event of it"
    )]
    UnknownFunction(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Invocation statistics per function name.
pub type UsageByFunction = BTreeMap<String, UsageInputs>;

impl Kitchen {
    /// The mesh's invocation statistics per function, every version and every member added up
    /// (calls, errors and execution time summed; p99 the worst version's).
    pub async fn usage_by_function(&self) -> UsageByFunction {
        usage_by_function(&self.node().mesh_function_stats().await)
    }

    /// The ROI of function `name`, or of the whole mesh when `None`, with the mesh's measured
    /// invocation statistics.
    pub async fn roi(&self, name: Option<&str>) -> Result<Roi, RoiError> {
        let usage = self.usage_by_function().await;
        self.roi_with_usage(name, &usage)
    }

    /// The ROI of `name` (or the mesh) given the invocation statistics per function.
    pub fn roi_with_usage(
        &self,
        name: Option<&str>,
        usage: &UsageByFunction,
    ) -> Result<Roi, RoiError> {
        let catalog = self.node().catalog();
        let runs = self.ledger().runs(None)?;
        let events = self.ledger().events(None)?;
        let names: BTreeSet<String> = match name {
            Some(n) => {
                let known = !catalog.versions(n).is_empty()
                    || runs.iter().any(|r| r.function.as_deref() == Some(n))
                    || events.iter().any(|e| e.function == n);
                if !known {
                    return Err(RoiError::UnknownFunction(n.to_string()));
                }
                BTreeSet::from([n.to_string()])
            }
            None => catalog
                .releases()
                .map(|r| r.manifest.name.clone())
                .chain(runs.iter().filter_map(|r| r.function.clone()))
                .chain(events.iter().map(|e| e.function.clone()))
                .collect(),
        };
        let functions = names
            .iter()
            .map(|n| {
                let versions = catalog.versions(n);
                // The version served (pinned by a rollback, else the highest) declares the value
                // per call and the memory limit.
                let served = catalog.served(n).map(|r| &r.manifest);
                FunctionInputs {
                    name: n.clone(),
                    runs: runs
                        .iter()
                        .filter(|r| r.function.as_deref() == Some(n.as_str()))
                        .cloned()
                        .collect(),
                    events: events
                        .iter()
                        .filter(|e| &e.function == n)
                        .cloned()
                        .collect(),
                    usage: usage.get(n).cloned().unwrap_or_default(),
                    value_per_call: served.map_or(0.0, |m| m.value_per_call),
                    memory_mb: served.map_or(0, |m| m.limits.memory_mb),
                    calls_per_sec: served
                        .and_then(|m| catalog.perf(&m.name, &m.version))
                        .and_then(|p| p.figures.calls_per_sec()),
                    artifacts: versions
                        .iter()
                        .map(|r| StoredArtifact {
                            version: r.manifest.version.to_string(),
                            bytes: r.artifact_len,
                            since_unix_ms: r.created_unix_ms,
                        })
                        .collect(),
                }
            })
            .collect();
        let unattributed_runs: Vec<RunRecord> = match name {
            Some(_) => Vec::new(),
            None => runs.into_iter().filter(|r| r.function.is_none()).collect(),
        };
        let inputs = RoiInputs {
            functions,
            unattributed_runs,
            now_unix_ms: klf_proto::unix_ms(),
        };
        Ok(roi(name.map(str::to_string), &inputs, self.rates()))
    }
}

/// Adds up per-function@version statistics into per-function usage.
pub fn usage_by_function(stats: &[FunctionStats]) -> UsageByFunction {
    let mut usage = UsageByFunction::new();
    for s in stats {
        usage
            .entry(s.function.clone())
            .or_default()
            .add(&UsageInputs {
                calls: s.calls,
                errors: s.errors,
                cpu_us: s.cpu_us,
                p99_us: s.p99_us,
                model_tokens_in: s.model_tokens_in,
                model_tokens_out: s.model_tokens_out,
                http_requests: s.http_requests,
                http_by_host: s.http_by_host.clone(),
            });
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(function: &str, version: &str, calls: u64, errors: u64, p99_us: u64) -> FunctionStats {
        FunctionStats {
            function: function.into(),
            version: version.into(),
            calls,
            errors,
            error_kinds: Default::default(),
            p50_us: 0,
            p99_us,
            cpu_us: calls * 100,
            recent_calls: 0,
            recent_errors: 0,
            ..Default::default()
        }
    }

    #[test]
    fn versions_add_up_per_function_and_p99_is_the_worst() {
        let usage = usage_by_function(&[
            stats("a", "1.0.0", 10, 1, 500),
            stats("a", "1.1.0", 5, 0, 900),
            stats("b", "2.0.0", 3, 3, 100),
        ]);
        assert_eq!(
            usage.get("a"),
            Some(&UsageInputs {
                calls: 15,
                errors: 1,
                cpu_us: 1500,
                p99_us: 900,
                ..Default::default()
            })
        );
        assert_eq!(usage.get("b").map(UsageInputs::served), Some(0));
    }
}
