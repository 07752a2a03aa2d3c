//! The validator every deploy path runs (`klf fn deploy`, `POST /v1/functions`,
//! `POST /v1/functions/validate`, the Chef's deployment manager): static analysis and compilation
//! ([`check_code`]), dependencies resolved as a deploy resolves them (yanked versions skipped),
//! then the examples in a real sandbox instance whose host is this node's — so calls reach the
//! real deployed dependencies through the mesh — timed by the performance test
//! ([`klf_functions::perf`]) and held to the budget. See `docs/chef.md`, "The validator".

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Node, NodeError, check_code};
use klf_functions::analysis::Analysis;
use klf_functions::native::is_native;
use klf_functions::package::Package;
use klf_functions::perf::{self, PerfBudget};
use klf_functions::sandbox::Instance;
use klf_registry::{PerfRecord, RegistryMsg, Release};
use klf_router::instances::{function_code, sandbox_limits};

/// What an over-budget performance test does to the deploy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PerfMode {
    /// Over budget refuses the deploy.
    #[default]
    Fail,
    /// Over budget is reported as warnings; the deploy goes on.
    Warn,
    /// No performance test (static analysis and dependencies still hold).
    Off,
}

impl std::str::FromStr for PerfMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(Self::Fail),
            "warn" => Ok(Self::Warn),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?} is not a perf mode (fail, warn, off)")),
        }
    }
}

/// How to run the performance test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerfOptions {
    pub mode: PerfMode,
    /// Timed runs of each example.
    pub runs: u32,
    /// The p99 a call may take, if the requirement states one.
    pub latency_budget_ms: Option<u64>,
}

impl Default for PerfOptions {
    fn default() -> Self {
        Self {
            mode: PerfMode::Fail,
            runs: perf::DEFAULT_RUNS,
            latency_budget_ms: None,
        }
    }
}

/// The most timed runs of each example one validation may ask for.
pub const MAX_PERF_RUNS: u32 = 1000;

/// What the validator found in a package it accepts.
#[derive(Debug, Clone)]
pub struct Validated {
    pub analysis: Analysis,
    /// Every release it resolves to, dependencies first.
    pub dependencies: Vec<Release>,
    /// The performance test's figures (none without examples, for a native built-in, or with
    /// [`PerfMode::Off`]).
    pub perf: Option<PerfRecord>,
    /// Static analysis warnings and, with [`PerfMode::Warn`], what was over budget.
    pub warnings: Vec<String>,
}

impl Node {
    /// Runs every check of the validator on `package`; `Err` refuses it, naming why.
    pub async fn validate_package(
        &self,
        package: &Package,
        options: PerfOptions,
    ) -> Result<Validated, NodeError> {
        let analysis = check_code(package).await?;
        let entry = &package.manifest.entry;
        let mut warnings: Vec<String> = analysis
            .warnings()
            .map(|w| format!("{entry}:{w}"))
            .collect();
        let manifest = Box::new(package.manifest.clone());
        let dependencies = self
            .ask_registry(|reply| RegistryMsg::ResolveDependencies { manifest, reply })
            .await?
            .map_err(NodeError::Registry)?;
        let perf = match options.mode {
            PerfMode::Off => None,
            _ if is_native(entry) || package.examples.is_empty() => None,
            PerfMode::Fail | PerfMode::Warn => Some(self.perf_test(package, options).await?),
        };
        if let Some(record) = &perf
            && !record.over_budget.is_empty()
        {
            let id = package.manifest.id();
            if options.mode == PerfMode::Fail {
                return Err(NodeError::OverBudget {
                    id,
                    over: record.over_budget.clone(),
                });
            }
            warnings.extend(
                record
                    .over_budget
                    .iter()
                    .map(|o| format!("performance: {o}")),
            );
        }
        Ok(Validated {
            analysis,
            dependencies,
            perf,
            warnings,
        })
    }

    /// The examples of `package`, timed in a throwaway instance on this node whose calls go
    /// through this node's host (the real dependencies), and held to the budget.
    async fn perf_test(
        &self,
        package: &Package,
        options: PerfOptions,
    ) -> Result<PerfRecord, NodeError> {
        let manifest = &package.manifest;
        let namespace = format!("{}--validate", manifest.name);
        let release = Release::unpublished(manifest, &namespace, "validator");
        let limits = sandbox_limits(manifest);
        let instance = Instance::start(
            function_code(manifest, &package.source),
            limits,
            self.router().instances().host_for(&release),
        )
        .await
        .map_err(NodeError::InvalidCode)?;
        let examples: Vec<(String, serde_json::Value)> = package
            .examples
            .iter()
            .map(|e| (e.name.clone(), e.input.clone()))
            .collect();
        let runs = options.runs.clamp(1, MAX_PERF_RUNS);
        let figures = perf::measure(Arc::new(instance), &examples, runs, limits.timeout).await;
        let budget = PerfBudget {
            latency_ms: options.latency_budget_ms,
            timeout_ms: manifest.limits.timeout_ms,
            memory_bytes: manifest.limits.memory_mb.saturating_mul(1 << 20),
            max_output_bytes: limits.max_output_bytes as u64,
        };
        let over_budget = figures.over_budget(&budget);
        tracing::info!(
            function = %manifest.id(),
            runs = figures.runs,
            p50_us = figures.p50_us,
            p99_us = figures.p99_us,
            elapsed_ms = figures.elapsed_ms,
            over = over_budget.len(),
            "performance test"
        );
        Ok(PerfRecord {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            figures,
            budget,
            over_budget,
            node: self.settings().node_id.clone(),
            measured_unix_ms: klf_proto::unix_ms(),
        })
    }

    /// Stores the performance figures of a published release beside it, on every node.
    pub async fn record_perf(&self, record: PerfRecord) -> Result<(), NodeError> {
        let record = Box::new(record);
        self.ask_registry(|reply| RegistryMsg::RecordPerf { record, reply })
            .await?
            .map_err(NodeError::Registry)
    }
}
