//! ROI arithmetic (docs/roi.md), over plain inputs so that it can be checked by hand.
//!
//! Cost lines (USD):
//! - `development`: pipeline wall time of every run × hourly rate;
//! - `compute_cpu`: execution time of the calls served plus the pipeline's sandbox time × price
//!   per CPU-second;
//! - `compute_memory`: the declared memory limit held for the execution time × price per
//!   GB-month of memory;
//! - `storage`: artifact bytes × the months since each was published × price per GB-month;
//! - `model`: tokens × price, as each run recorded it;
//! - `function_model`: the tokens deployed functions' own `ctx.model` requests used × the
//!   token prices of the rates;
//! - `http`: the `ctx.http` requests deployed functions made (counted, not priced);
//! - `maintenance`: (repair rounds + repairs + rollbacks + redeploys) × hours per event × hourly rate.
//!
//! Value lines (USD):
//! - `time_saved`: for each function the Chef delivered, (declared baseline hours − its
//!   development hours) × hourly rate;
//! - `invocations`: successful calls served × the declared value per call.
//!
//! Quality and scalability are reported as metrics, not money: test pass rate, error rate, p99.
//!
//! A line's basis is measured only when every quantity behind it was measured; the prices it is
//! multiplied by are configuration ([`Rates`]) and are named in the note.

use serde::{Deserialize, Serialize};

use super::{Amount, Basis, EventKind, MaintenanceEvent, Rates, RunOutcome, RunRecord};

/// Seconds in the month the per-month prices mean (30 days).
pub const SECONDS_PER_MONTH: f64 = 30.0 * 24.0 * 3600.0;
const BYTES_PER_GB: f64 = 1024.0 * 1024.0 * 1024.0;
const MS_PER_HOUR: f64 = 3_600_000.0;

/// Invocation statistics of one function (every version added up), as the routers measure them
/// where calls are served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageInputs {
    pub calls: u64,
    pub errors: u64,
    /// Execution time inside instances, summed, in microseconds.
    pub cpu_us: u64,
    /// 99th percentile latency of the calls served, in microseconds (0 when no calls).
    pub p99_us: u64,
    /// Tokens the function's own `ctx.model` requests used (prompt, completion).
    #[serde(default)]
    pub model_tokens_in: u64,
    #[serde(default)]
    pub model_tokens_out: u64,
    /// `ctx.http.fetch` requests that got an answer.
    #[serde(default)]
    pub http_requests: u64,
    /// The same requests by host.
    #[serde(default)]
    pub http_by_host: std::collections::BTreeMap<String, u64>,
}

impl UsageInputs {
    /// Adds another version's (or node's) statistics: counts add up, p99 takes the worst.
    pub fn add(&mut self, other: &Self) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.cpu_us += other.cpu_us;
        self.p99_us = self.p99_us.max(other.p99_us);
        self.model_tokens_in += other.model_tokens_in;
        self.model_tokens_out += other.model_tokens_out;
        self.http_requests += other.http_requests;
        for (host, n) in &other.http_by_host {
            *self.http_by_host.entry(host.clone()).or_default() += n;
        }
    }

    /// Calls that succeeded.
    pub fn served(&self) -> u64 {
        self.calls.saturating_sub(self.errors)
    }
}

/// One published artifact and since when it has been stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArtifact {
    pub version: String,
    pub bytes: u64,
    pub since_unix_ms: u64,
}

/// Everything ROI needs to know about one function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionInputs {
    pub name: String,
    /// The Chef runs that built it.
    pub runs: Vec<RunRecord>,
    pub events: Vec<MaintenanceEvent>,
    /// Measured by the routers.
    pub usage: UsageInputs,
    /// Declared in the manifest (`[value] per_call`) of the version served.
    pub value_per_call: f64,
    /// Declared in the manifest (`[limits] memory_mb`) of the version served.
    pub memory_mb: u64,
    /// Its published versions.
    pub artifacts: Vec<StoredArtifact>,
    /// Calls/s one instance of the version served sustained in the validator's load step (the
    /// best of 1, 8 and 32 calls in flight); `None` when the test did not run.
    #[serde(default)]
    pub calls_per_sec: Option<f64>,
}

/// The inputs of one ROI: a function's, or every function's and the runs that built nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoiInputs {
    pub functions: Vec<FunctionInputs>,
    /// Runs with no function (no match, or failed before naming one); mesh scope only.
    pub unattributed_runs: Vec<RunRecord>,
    /// "Now", for how long artifacts have been stored.
    pub now_unix_ms: u64,
}

/// One quantity behind a line, with its basis and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantity {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub basis: Basis,
    pub source: String,
}

impl Quantity {
    fn new(name: &str, value: f64, unit: &str, basis: Basis, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            basis,
            source: source.into(),
        }
    }
}

/// One cost or value line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Stable key (`development`, `compute_cpu`, `time_saved`, …).
    pub key: String,
    pub label: String,
    /// USD, with the line's basis and a note of how it was computed.
    pub amount: Amount,
    pub quantities: Vec<Quantity>,
}

impl Line {
    fn new(key: &str, label: &str, value: f64, note: String, quantities: Vec<Quantity>) -> Self {
        let basis = quantities
            .iter()
            .fold(Basis::Measured, |b, q| b.and(q.basis));
        Self {
            key: key.into(),
            label: label.into(),
            amount: Amount { value, basis, note },
            quantities,
        }
    }
}

/// The cost or the value side: its lines and their sum (USD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub lines: Vec<Line>,
    pub total: f64,
}

impl Breakdown {
    fn of(lines: Vec<Line>) -> Self {
        let total = lines.iter().map(|l| l.amount.value).fold(0.0, |a, b| a + b);
        Self { lines, total }
    }

    /// The line with `key`.
    pub fn line(&self, key: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.key == key)
    }
}

/// A quality or scalability figure (not money); `None` when there is nothing to measure yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    pub label: String,
    pub value: Option<f64>,
    pub unit: String,
    pub basis: Basis,
    pub note: String,
}

/// The ROI of one function or of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roi {
    /// The function, or `None` for the whole mesh.
    pub function: Option<String>,
    pub cost: Breakdown,
    pub value: Breakdown,
    /// Test pass rate, error rate, p99: ratios and times, not money.
    pub quality: Vec<Metric>,
    /// `(value − cost) / cost` with every line, declared ones included; `None` when nothing has
    /// cost anything yet.
    pub roi: Option<f64>,
    /// How the ROI was computed, or why there is none.
    pub roi_note: String,
    /// The same ratio from measured lines alone (measured value − measured cost) / measured
    /// cost: what the mesh observed, with no stated guess in it. `None` when no measured cost
    /// exists yet.
    #[serde(default)]
    pub roi_measured: Option<f64>,
    /// The lines whose declared inputs move [`Roi::roi`] away from [`Roi::roi_measured`]
    /// (for example a recipe's baseline hours, a manifest's value per call).
    #[serde(default)]
    pub declared: Vec<String>,
    /// The prices used, each with its source.
    pub rates: Rates,
    pub functions: usize,
    pub runs: usize,
    pub events: usize,
}

/// Computes the ROI of `inputs` with `rates`; `function` names the scope (None = the mesh).
pub fn roi(function: Option<String>, inputs: &RoiInputs, rates: &Rates) -> Roi {
    let hourly = rates.hourly_rate_usd.value;
    let all_runs: Vec<&RunRecord> = inputs
        .functions
        .iter()
        .flat_map(|f| f.runs.iter())
        .chain(inputs.unattributed_runs.iter())
        .collect();
    let events: Vec<&MaintenanceEvent> = inputs
        .functions
        .iter()
        .flat_map(|f| f.events.iter())
        .collect();
    let src = rates.describe_source();

    // Development time.
    let dev_ms: u64 = all_runs.iter().map(|r| r.wall_ms()).sum();
    let dev_hours = dev_ms as f64 / MS_PER_HOUR;
    let development = Line::new(
        "development",
        "development time",
        dev_hours * hourly,
        format!(
            "{} pipeline run(s), {} of stage wall time × ${hourly}/h",
            all_runs.len(),
            seconds(dev_ms as f64 / 1000.0)
        ),
        vec![
            Quantity::new(
                "runs",
                all_runs.len() as f64,
                "runs",
                Basis::Measured,
                "ledger",
            ),
            Quantity::new(
                "pipeline_wall_time",
                dev_ms as f64 / 1000.0,
                "s",
                Basis::Measured,
                "stage timings recorded by the Chef",
            ),
        ],
    );

    // Compute: CPU.
    let usage = inputs
        .functions
        .iter()
        .fold(UsageInputs::default(), |mut u, f| {
            u.add(&f.usage);
            u
        });
    let exec_s = usage.cpu_us as f64 / 1e6;
    let pipeline_s = all_runs.iter().map(|r| r.compute_us).sum::<u64>() as f64 / 1e6;
    let cpu_rate = rates.cpu_second_usd.value;
    let compute_cpu = Line::new(
        "compute_cpu",
        "compute: CPU",
        (exec_s + pipeline_s) * cpu_rate,
        format!(
            "{} executing {} call(s) + {} validating and testing × ${cpu_rate}/CPU-s",
            seconds(exec_s),
            usage.calls,
            seconds(pipeline_s)
        ),
        vec![
            Quantity::new(
                "execution_time",
                exec_s,
                "s",
                Basis::Measured,
                "invocation statistics",
            ),
            Quantity::new(
                "pipeline_sandbox_time",
                pipeline_s,
                "s",
                Basis::Measured,
                "ledger",
            ),
        ],
    );

    // Compute: memory (declared limit × measured execution time).
    let gb_seconds: f64 = inputs
        .functions
        .iter()
        .map(|f| f.memory_mb as f64 / 1024.0 * f.usage.cpu_us as f64 / 1e6)
        .fold(0.0, |a, b| a + b);
    let memory_rate = rates.memory_gb_month_usd.value;
    let compute_memory = Line::new(
        "compute_memory",
        "compute: memory",
        gb_seconds / SECONDS_PER_MONTH * memory_rate,
        format!(
            "{} GB·s ([limits] memory_mb × execution time) × ${memory_rate}/GB-month",
            sig(gb_seconds)
        ),
        vec![
            Quantity::new(
                "memory_limit",
                inputs
                    .functions
                    .iter()
                    .map(|f| f.memory_mb)
                    .max()
                    .unwrap_or(0) as f64,
                "MB",
                Basis::Declared,
                "manifest [limits] memory_mb (largest)",
            ),
            Quantity::new(
                "execution_time",
                exec_s,
                "s",
                Basis::Measured,
                "invocation statistics",
            ),
        ],
    );

    // Storage.
    let artifacts: Vec<&StoredArtifact> = inputs
        .functions
        .iter()
        .flat_map(|f| f.artifacts.iter())
        .collect();
    let gb_months: f64 = artifacts
        .iter()
        .map(|a| {
            let months = inputs.now_unix_ms.saturating_sub(a.since_unix_ms) as f64
                / 1000.0
                / SECONDS_PER_MONTH;
            a.bytes as f64 / BYTES_PER_GB * months
        })
        .fold(0.0, |a, b| a + b);
    let bytes: u64 = artifacts.iter().map(|a| a.bytes).sum();
    let storage_rate = rates.gb_month_usd.value;
    let storage = Line::new(
        "storage",
        "compute: storage",
        gb_months * storage_rate,
        format!(
            "{} artifact(s), {bytes} bytes, {} GB-months since publication × ${storage_rate}/GB-month",
            artifacts.len(),
            sig(gb_months)
        ),
        vec![
            Quantity::new(
                "artifact_bytes",
                bytes as f64,
                "bytes",
                Basis::Measured,
                "catalog",
            ),
            Quantity::new(
                "gb_months",
                gb_months,
                "GB-month",
                Basis::Measured,
                "catalog publication times",
            ),
        ],
    );

    // External API: the model.
    let tokens_in: u64 = all_runs.iter().map(|r| r.model_tokens_in).sum();
    let tokens_out: u64 = all_runs.iter().map(|r| r.model_tokens_out).sum();
    let model_basis = all_runs
        .iter()
        .fold(Basis::Measured, |b, r| b.and(r.model_cost.basis));
    let model = Line::new(
        "model",
        "external API: model tokens",
        all_runs
            .iter()
            .map(|r| r.model_cost.value)
            .fold(0.0, |a, b| a + b),
        format!(
            "{tokens_in} prompt + {tokens_out} completion tokens over {} run(s), priced when recorded",
            all_runs.len()
        ),
        vec![
            Quantity::new(
                "tokens_in",
                tokens_in as f64,
                "tokens",
                Basis::Measured,
                "provider usage",
            ),
            Quantity::new(
                "tokens_out",
                tokens_out as f64,
                "tokens",
                Basis::Measured,
                "provider usage",
            ),
            Quantity::new(
                "model_cost",
                all_runs
                    .iter()
                    .map(|r| r.model_cost.value)
                    .fold(0.0, |a, b| a + b),
                "USD",
                model_basis,
                "run records",
            ),
        ],
    );

    // External API: what deployed functions asked of the model and of HTTP services.
    let (in_rate, out_rate) = (
        rates.model_input_usd_per_1k.value,
        rates.model_output_usd_per_1k.value,
    );
    let function_model = Line::new(
        "function_model",
        "external API: function model tokens",
        usage.model_tokens_in as f64 / 1000.0 * in_rate
            + usage.model_tokens_out as f64 / 1000.0 * out_rate,
        format!(
            "{} prompt + {} completion tokens of ctx.model calls × ${in_rate} / ${out_rate} per 1k",
            usage.model_tokens_in, usage.model_tokens_out
        ),
        vec![
            Quantity::new(
                "tokens_in",
                usage.model_tokens_in as f64,
                "tokens",
                Basis::Measured,
                "invocation statistics (provider usage)",
            ),
            Quantity::new(
                "tokens_out",
                usage.model_tokens_out as f64,
                "tokens",
                Basis::Measured,
                "invocation statistics (provider usage)",
            ),
        ],
    );
    let mut http_cost = 0.0;
    let mut by_host = Vec::new();
    for (host, n) in &usage.http_by_host {
        let price = rates.http_request_usd.get(host).copied().unwrap_or(0.0);
        http_cost += *n as f64 * price;
        by_host.push(format!("{host} {n} × ${price}"));
    }
    let http = Line::new(
        "http",
        "external API: HTTP requests",
        http_cost,
        format!(
            "{} ctx.http request(s) answered{}; priced per host by [roi.http_request_usd] (unlisted hosts $0)",
            usage.http_requests,
            if by_host.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_host.join(", "))
            }
        ),
        vec![Quantity::new(
            "requests",
            usage.http_requests as f64,
            "requests",
            Basis::Measured,
            "invocation statistics",
        )],
    );

    // Maintenance.
    let repair_rounds: u64 = all_runs.iter().map(|r| u64::from(r.repairs)).sum();
    let count = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count() as u64;
    let (repairs, rollbacks, redeploys) = (
        count(EventKind::Repair),
        count(EventKind::Rollback),
        count(EventKind::Redeploy),
    );
    let maintenance_events = repair_rounds + repairs + rollbacks + redeploys;
    let event_hours = rates.maintenance_event_hours.value;
    let maintenance = Line::new(
        "maintenance",
        "maintenance",
        maintenance_events as f64 * event_hours * hourly,
        format!(
            "{repair_rounds} repair round(s) + {repairs} repair(s) + {rollbacks} rollback(s) + \
             {redeploys} redeploy(s) × {event_hours} h × ${hourly}/h"
        ),
        vec![Quantity::new(
            "events",
            maintenance_events as f64,
            "events",
            Basis::Measured,
            "ledger",
        )],
    );

    // Value: time saved, for each function the Chef delivered.
    let mut baseline_hours = 0.0;
    let mut delivered_dev_ms = 0u64;
    let mut delivered = 0usize;
    let mut baseline_notes = Vec::new();
    for f in &inputs.functions {
        let Some(last) = f
            .runs
            .iter()
            .rev()
            .find(|r| matches!(r.outcome, RunOutcome::Deployed | RunOutcome::Built))
        else {
            continue;
        };
        delivered += 1;
        baseline_hours += last.baseline_hours.value;
        delivered_dev_ms += f.runs.iter().map(|r| r.wall_ms()).sum::<u64>();
        if !last.baseline_hours.note.is_empty() {
            baseline_notes.push(last.baseline_hours.note.clone());
        }
    }
    let delivered_dev_hours = delivered_dev_ms as f64 / MS_PER_HOUR;
    let time_saved = Line::new(
        "time_saved",
        "time saved",
        (baseline_hours - delivered_dev_hours) * hourly,
        if delivered == 0 {
            "no function delivered by the Chef: no declared baseline".to_string()
        } else {
            format!(
                "({} h declared baseline{} − {} development) × ${hourly}/h, {delivered} function(s)",
                sig(baseline_hours),
                if baseline_notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", baseline_notes.join("; "))
                },
                seconds(delivered_dev_ms as f64 / 1000.0),
            )
        },
        vec![
            Quantity::new(
                "baseline_hours",
                baseline_hours,
                "h",
                Basis::Declared,
                "recipe baseline recorded with the run",
            ),
            Quantity::new(
                "development_time",
                delivered_dev_ms as f64 / 1000.0,
                "s",
                Basis::Measured,
                "stage timings recorded by the Chef",
            ),
        ],
    );

    // Value: invocations.
    let call_value: f64 = inputs
        .functions
        .iter()
        .map(|f| f.usage.served() as f64 * f.value_per_call)
        .fold(0.0, |a, b| a + b);
    let served = usage.served();
    let per_call_note = match inputs.functions.as_slice() {
        [one] if one.value_per_call == 0.0 => "no [value] per_call declared".to_string(),
        [one] => format!("${}/call declared in [value] per_call", one.value_per_call),
        _ => "each function's [value] per_call".to_string(),
    };
    let invocations = Line::new(
        "invocations",
        "invocations served",
        call_value,
        format!(
            "{served} successful call(s) of {} (measured) × {per_call_note}",
            usage.calls
        ),
        vec![
            Quantity::new(
                "calls_served",
                served as f64,
                "calls",
                Basis::Measured,
                "invocation statistics",
            ),
            Quantity::new(
                "value_per_call",
                match inputs.functions.as_slice() {
                    [one] => one.value_per_call,
                    _ if served > 0 => call_value / served as f64,
                    _ => 0.0,
                },
                "USD",
                Basis::Declared,
                "manifest [value] per_call",
            ),
        ],
    );

    // Quality and scalability.
    let (passed, total) = inputs
        .functions
        .iter()
        .filter_map(|f| f.runs.last())
        .fold((0u64, 0u64), |(p, t), r| {
            (p + u64::from(r.tests_passed), t + u64::from(r.tests_total))
        });
    let quality = vec![
        Metric {
            key: "test_pass_rate".into(),
            label: "tests passed".into(),
            value: (total > 0).then(|| passed as f64 / total as f64),
            unit: "ratio".into(),
            basis: Basis::Measured,
            note: if total > 0 {
                format!("{passed}/{total} generated tests passed (latest run of each function)")
            } else {
                "no tests recorded".into()
            },
        },
        Metric {
            key: "error_rate".into(),
            label: "error rate".into(),
            value: (usage.calls > 0).then(|| usage.errors as f64 / usage.calls as f64),
            unit: "ratio".into(),
            basis: Basis::Measured,
            note: if usage.calls > 0 {
                format!("{} error(s) in {} call(s)", usage.errors, usage.calls)
            } else {
                "no calls yet".into()
            },
        },
        {
            let measured: Vec<f64> = inputs
                .functions
                .iter()
                .filter_map(|f| f.calls_per_sec)
                .collect();
            Metric {
                key: "calls_per_sec".into(),
                label: "scalability".into(),
                value: (!measured.is_empty()).then(|| measured.iter().sum()),
                unit: "calls/s".into(),
                basis: Basis::Measured,
                note: match measured.len() {
                    0 => "no performance test recorded".into(),
                    1 => "one instance under the validator's load step (best of 1, 8, 32 in \
                          flight)"
                        .into(),
                    n => format!(
                        "one instance of each of {n} function(s) under the validator's load \
                         step, added up"
                    ),
                },
            }
        },
        Metric {
            key: "p99_ms".into(),
            label: "latency p99".into(),
            value: (usage.calls > 0).then(|| usage.p99_us as f64 / 1000.0),
            unit: "ms".into(),
            basis: Basis::Measured,
            note: if usage.calls > 0 {
                "worst p99 of the calls served, per function and version".into()
            } else {
                "no calls yet".into()
            },
        },
    ];

    let cost = Breakdown::of(vec![
        development,
        compute_cpu,
        compute_memory,
        storage,
        model,
        function_model,
        http,
        maintenance,
    ]);
    let value = Breakdown::of(vec![time_saved, invocations]);
    let (ratio, roi_note) = if cost.total > 0.0 {
        let r = (value.total - cost.total) / cost.total;
        (
            Some(r),
            format!(
                "(value ${} − cost ${}) / cost ${}; {src}",
                sig(value.total),
                sig(cost.total),
                sig(cost.total)
            ),
        )
    } else {
        (
            None,
            "no cost recorded yet (no pipeline run, no execution, no stored artifact): ROI is \
             undefined"
                .to_string(),
        )
    };
    let measured = |b: &Breakdown| -> f64 {
        b.lines
            .iter()
            .filter(|l| l.amount.basis == Basis::Measured)
            .map(|l| l.amount.value)
            .sum()
    };
    let measured_cost = measured(&cost);
    let roi_measured =
        (measured_cost > 0.0).then(|| (measured(&value) - measured_cost) / measured_cost);
    let declared: Vec<String> = cost
        .lines
        .iter()
        .chain(&value.lines)
        .filter(|l| l.amount.basis == Basis::Declared && l.amount.value != 0.0)
        .map(|l| l.label.clone())
        .collect();
    Roi {
        function,
        cost,
        value,
        quality,
        roi: ratio,
        roi_note,
        roi_measured,
        declared,
        rates: rates.clone(),
        functions: inputs.functions.len(),
        runs: all_runs.len(),
        events: events.len(),
    }
}

/// A number with about four significant digits, for notes.
fn sig(x: f64) -> String {
    if x == 0.0 {
        // Also -0.0, which an empty float sum gives.
        return "0".into();
    }
    if !x.is_finite() {
        return format!("{x}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let text = format!("{x:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn seconds(s: f64) -> String {
    format!("{} s", sig(s))
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::*;
    use crate::ledger::{Rate, RateSource};

    fn rates() -> Rates {
        let r = |value| Rate {
            value,
            source: RateSource::Config,
        };
        Rates {
            hourly_rate_usd: r(100.0),
            cpu_second_usd: r(0.01),
            gb_month_usd: r(2.0),
            memory_gb_month_usd: r(SECONDS_PER_MONTH),
            maintenance_event_hours: r(0.5),
            model_input_usd_per_1k: r(0.0),
            model_output_usd_per_1k: r(0.0),
            http_request_usd: [("api.example.com".to_string(), 0.01)].into(),
            file: None,
        }
    }

    #[test]
    fn function_tokens_and_http_requests_are_measured_external_costs() {
        let mut rates = rates();
        rates.model_input_usd_per_1k = Rate {
            value: 1.0,
            source: RateSource::Config,
        };
        rates.model_output_usd_per_1k = Rate {
            value: 2.0,
            source: RateSource::Config,
        };
        let inputs = RoiInputs {
            functions: vec![FunctionInputs {
                name: "feed".into(),
                usage: UsageInputs {
                    calls: 5,
                    model_tokens_in: 2000,
                    model_tokens_out: 500,
                    http_requests: 7,
                    http_by_host: [
                        ("api.example.com".to_string(), 4),
                        ("free.io".to_string(), 3),
                    ]
                    .into(),
                    ..Default::default()
                },
                ..FunctionInputs::default()
            }],
            ..RoiInputs::default()
        };
        let roi = roi(Some("feed".into()), &inputs, &rates);
        let tokens = roi.cost.line("function_model").unwrap();
        assert!(close(tokens.amount.value, 2.0 + 1.0));
        assert_eq!(tokens.amount.basis, Basis::Measured);
        let http = roi.cost.line("http").unwrap();
        assert!(close(http.amount.value, 0.04), "{http:?}");
        assert_eq!(http.amount.basis, Basis::Measured);
        assert!(
            http.amount.note.contains("api.example.com 4 × $0.01"),
            "{}",
            http.amount.note
        );
        assert!(
            http.amount.note.contains("free.io 3 × $0"),
            "{}",
            http.amount.note
        );
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    fn amount(breakdown: &Breakdown, key: &str) -> f64 {
        breakdown
            .line(key)
            .map(|l| l.amount.value)
            .unwrap_or_else(|| panic!("no line {key}"))
    }

    /// One function, built by one run of 36 s with 1 repair round, 1 rollback, 20 calls
    /// (2 errors) using 10 s of execution, a 512 MB limit, a 1 GiB artifact stored for 15 days.
    fn one_function() -> RoiInputs {
        let mut build = run("r1", Some("fx"), 0, 36_000);
        build.repairs = 1;
        build.compute_us = 5_000_000;
        build.model_tokens_in = 1000;
        build.model_cost = Amount::measured(0.25, "tokens × price");
        build.baseline_hours = Amount::declared(2.0, "recipe fx: 2 h");
        build.tests_passed = 3;
        build.tests_total = 4;
        let day_ms = 24 * 3600 * 1000;
        RoiInputs {
            functions: vec![FunctionInputs {
                name: "fx".into(),
                runs: vec![build],
                events: vec![MaintenanceEvent {
                    kind: EventKind::Rollback,
                    function: "fx".into(),
                    version: Some("1.0.0".into()),
                    at_unix_ms: 1,
                    note: String::new(),
                }],
                usage: UsageInputs {
                    calls: 20,
                    errors: 2,
                    cpu_us: 10_000_000,
                    p99_us: 2_500,
                    ..Default::default()
                },
                value_per_call: 0.5,
                memory_mb: 512,
                artifacts: vec![StoredArtifact {
                    version: "1.0.0".into(),
                    bytes: 1 << 30,
                    since_unix_ms: 0,
                }],
                calls_per_sec: None,
            }],
            unattributed_runs: vec![],
            now_unix_ms: 15 * day_ms,
        }
    }

    #[test]
    fn costs_values_and_roi_match_a_hand_computation() {
        let roi = roi(Some("fx".into()), &one_function(), &rates());
        // Development: 36 s = 0.01 h × $100 = $1.
        assert!(close(amount(&roi.cost, "development"), 1.0));
        // CPU: (10 s + 5 s) × $0.01 = $0.15.
        assert!(close(amount(&roi.cost, "compute_cpu"), 0.15));
        // Memory: 0.5 GB × 10 s = 5 GB·s; × (SECONDS_PER_MONTH $/GB-month) / SECONDS_PER_MONTH = $5.
        assert!(close(amount(&roi.cost, "compute_memory"), 5.0));
        // Storage: 1 GiB × half a month × $2 = $1.
        assert!(close(amount(&roi.cost, "storage"), 1.0));
        assert!(close(amount(&roi.cost, "model"), 0.25));
        // Maintenance: (1 repair round + 1 rollback) × 0.5 h × $100 = $100.
        assert!(close(amount(&roi.cost, "maintenance"), 100.0));
        assert!(close(roi.cost.total, 107.4));
        // Time saved: (2 h − 0.01 h) × $100 = $199.
        assert!(close(amount(&roi.value, "time_saved"), 199.0));
        // Invocations: 18 successful × $0.5 = $9.
        assert!(close(amount(&roi.value, "invocations"), 9.0));
        assert!(close(roi.value.total, 208.0));
        let expected = (208.0 - 107.4) / 107.4;
        assert!(
            close(roi.roi.unwrap_or(f64::NAN), expected),
            "{:?}",
            roi.roi
        );
        assert_eq!((roi.functions, roi.runs, roi.events), (1, 1, 1));

        let metric = |key: &str| {
            roi.quality
                .iter()
                .find(|m| m.key == key)
                .and_then(|m| m.value)
        };
        assert_eq!(metric("test_pass_rate"), Some(0.75));
        assert_eq!(metric("error_rate"), Some(0.1));
        assert_eq!(metric("p99_ms"), Some(2.5));
        assert_eq!(metric("calls_per_sec"), None);
        let mut measured = one_function();
        measured.functions[0].calls_per_sec = Some(1250.0);
        let measured = super::roi(Some("fx".into()), &measured, &rates());
        let scalability = measured.quality.iter().find(|m| m.key == "calls_per_sec");
        assert_eq!(scalability.and_then(|m| m.value), Some(1250.0));
        assert_eq!(scalability.map(|m| m.unit.as_str()), Some("calls/s"));
    }

    #[test]
    fn every_line_is_marked_measured_or_declared() {
        let roi = roi(Some("fx".into()), &one_function(), &rates());
        let basis = |b: &Breakdown, key: &str| b.line(key).map(|l| l.amount.basis);
        for key in [
            "development",
            "compute_cpu",
            "storage",
            "model",
            "maintenance",
        ] {
            assert_eq!(basis(&roi.cost, key), Some(Basis::Measured), "{key}");
        }
        // A declared memory limit, a declared baseline, a declared value per call.
        assert_eq!(basis(&roi.cost, "compute_memory"), Some(Basis::Declared));
        assert_eq!(basis(&roi.value, "time_saved"), Some(Basis::Declared));
        assert_eq!(basis(&roi.value, "invocations"), Some(Basis::Declared));
        // …while the calls behind the value are measured.
        let calls = roi
            .value
            .line("invocations")
            .and_then(|l| l.quantities.iter().find(|q| q.name == "calls_served"));
        assert_eq!(
            calls.map(|q| (q.value, q.basis)),
            Some((18.0, Basis::Measured))
        );
        // A declared model cost makes the model line declared.
        let mut inputs = one_function();
        inputs.functions[0].runs[0].model_cost = Amount::declared(0.25, "estimated");
        let roi = super::roi(None, &inputs, &rates());
        assert_eq!(basis(&roi.cost, "model"), Some(Basis::Declared));
        // Notes say where figures came from.
        let note = |b: &Breakdown, key: &str| {
            b.line(key)
                .map(|l| l.amount.note.clone())
                .unwrap_or_default()
        };
        assert!(note(&roi.value, "invocations").contains("18 successful call(s) of 20 (measured)"));
        assert!(note(&roi.value, "invocations").contains("$0.5/call declared in [value] per_call"));
        assert!(note(&roi.value, "time_saved").contains("2 h declared baseline [recipe fx: 2 h]"));
    }

    #[test]
    fn the_measured_roi_stands_apart_from_the_one_with_declared_values() {
        let roi = roi(Some("fx".into()), &one_function(), &rates());
        let measured_cost: f64 = roi
            .cost
            .lines
            .iter()
            .filter(|l| l.amount.basis == Basis::Measured)
            .map(|l| l.amount.value)
            .sum();
        let measured_value: f64 = roi
            .value
            .lines
            .iter()
            .filter(|l| l.amount.basis == Basis::Measured)
            .map(|l| l.amount.value)
            .sum();
        let expected = (measured_value - measured_cost) / measured_cost;
        assert!(
            roi.roi_measured
                .is_some_and(|r| (r - expected).abs() < 1e-9)
        );
        // Time saved (baseline hours) and value per call are declared: they are named, and they
        // are what lifts the full ROI above the measured one.
        assert!(
            roi.declared.iter().any(|l| l == "time saved"),
            "{:?}",
            roi.declared
        );
        assert!(
            roi.declared.iter().any(|l| l == "invocations served"),
            "{:?}",
            roi.declared
        );
        assert!(roi.roi.unwrap_or(f64::MIN) > roi.roi_measured.unwrap_or(f64::MAX));
    }

    #[test]
    fn no_cost_means_no_roi_and_says_why() {
        let inputs = RoiInputs {
            functions: vec![FunctionInputs {
                name: "free".into(),
                value_per_call: 1.0,
                ..FunctionInputs::default()
            }],
            ..RoiInputs::default()
        };
        let roi = roi(Some("free".into()), &inputs, &rates());
        assert_eq!(roi.cost.total, 0.0);
        assert_eq!(roi.roi, None);
        assert!(
            roi.roi_note.contains("no cost recorded yet"),
            "{}",
            roi.roi_note
        );
        assert!(roi.quality.iter().all(|m| m.value.is_none()));
        let empty = super::roi(None, &RoiInputs::default(), &Rates::default());
        assert_eq!((empty.roi, empty.value.total), (None, 0.0));
    }

    #[test]
    fn the_mesh_adds_functions_and_runs_that_built_nothing() {
        let mut inputs = one_function();
        let mut second = inputs.functions[0].clone();
        second.name = "fy".into();
        second.runs = vec![];
        second.events = vec![];
        second.value_per_call = 0.1;
        second.usage = UsageInputs {
            calls: 10,
            errors: 0,
            cpu_us: 0,
            p99_us: 9_000,
            ..Default::default()
        };
        second.artifacts = vec![];
        inputs.functions.push(second);
        // A run that matched no recipe: 3.6 s = 0.001 h × $100 = $0.10 of development.
        inputs.unattributed_runs.push(run("r0", None, 0, 3_600));
        let roi = roi(None, &inputs, &rates());
        assert_eq!(roi.function, None);
        assert!(close(amount(&roi.cost, "development"), 1.1));
        // fy was not built by the Chef: no time saved for it, but its calls count.
        assert!(close(amount(&roi.value, "time_saved"), 199.0));
        assert!(close(amount(&roi.value, "invocations"), 9.0 + 1.0));
        let p99 = roi
            .quality
            .iter()
            .find(|m| m.key == "p99_ms")
            .and_then(|m| m.value);
        assert_eq!(p99, Some(9.0));
        assert_eq!((roi.functions, roi.runs), (2, 2));
    }

    #[test]
    fn a_failed_run_delivers_no_time_saved() {
        let mut inputs = one_function();
        inputs.functions[0].runs[0].outcome = RunOutcome::Failed;
        let roi = roi(None, &inputs, &rates());
        assert_eq!(amount(&roi.value, "time_saved"), 0.0);
        assert!(
            close(amount(&roi.cost, "development"), 1.0),
            "failures still cost"
        );
    }

    #[test]
    fn numbers_in_notes_keep_four_significant_digits() {
        assert_eq!(sig(0.000123456), "0.0001235");
        assert_eq!(sig(1234.5678), "1235");
        assert_eq!(sig(2.0), "2");
        assert_eq!(sig(0.0), "0");
    }
}
