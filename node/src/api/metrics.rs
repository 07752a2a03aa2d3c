//! `GET /metrics`: this node in the Prometheus text format (version 0.0.4), for a scraper that
//! reads every node (each call is counted once, on the node that served it).
//!
//! Rendered at scrape time straight from the counters the node keeps anyway (the router's stats
//! book, membership, the catalog, the running instances), so there is no second registry to keep
//! in step with them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use klf_actors::node::Node;
use klf_actors::router::stats::StatsSnapshot;

use super::{ApiError, Caller};

/// Histogram bounds of `klf_function_latency_seconds`, in µs: 100 µs to 10 s.
const LATENCY_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// This node in the Prometheus text format: membership, catalog, instances and per-function call
/// counters and latency histogram (reader role: function names are not for anonymous eyes).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    security(("bearer" = ["reader"])),
    responses((status = 200, description = "Prometheus text format 0.0.4, this node only", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
pub async fn metrics(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let mut members: BTreeMap<String, u64> = ["alive", "suspect", "down", "left"]
        .into_iter()
        .map(|state| (state.to_string(), 0))
        .collect();
    // A membership actor that does not answer leaves the gauges at zero: the scrape still works.
    for member in node.members().await.unwrap_or_default() {
        *members.entry(member.state.to_string()).or_default() += 1;
    }
    let mut instances: BTreeMap<String, u64> = BTreeMap::new();
    for hosted in node.router().instances().running() {
        *instances.entry(hosted.id()).or_default() += 1;
    }
    let text = render(&Scrape {
        members,
        catalog_records: node.catalog().len() as u64,
        instances,
        functions: node.router().stats().snapshots(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// What one scrape reports.
struct Scrape {
    members: BTreeMap<String, u64>,
    catalog_records: u64,
    /// Running instances by `name@version`.
    instances: BTreeMap<String, u64>,
    functions: Vec<StatsSnapshot>,
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The `function` and `version` labels of a snapshot.
fn labels(s: &StatsSnapshot) -> String {
    format!(
        "function=\"{}\",version=\"{}\"",
        escape(&s.stats.function),
        escape(&s.stats.version)
    )
}

/// A counter family with one sample per function version.
fn per_function(
    out: &mut String,
    functions: &[StatsSnapshot],
    name: &str,
    help: &str,
    value: impl Fn(&StatsSnapshot) -> String,
) {
    family(out, name, "counter", help);
    for s in functions {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(s), value(s));
    }
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn render(scrape: &Scrape) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "klf_members",
        "gauge",
        "Members of the mesh this node sees, by state.",
    );
    for (state, n) in &scrape.members {
        let _ = writeln!(out, "klf_members{{state=\"{}\"}} {n}", escape(state));
    }
    family(
        &mut out,
        "klf_catalog_records",
        "gauge",
        "Records in this node's replica of the catalog (releases, deployments, tombstones).",
    );
    let _ = writeln!(out, "klf_catalog_records {}", scrape.catalog_records);
    family(
        &mut out,
        "klf_function_instances",
        "gauge",
        "Function instances running on this node.",
    );
    for (id, n) in &scrape.instances {
        let (function, version) = id.split_once('@').unwrap_or((id, ""));
        let _ = writeln!(
            out,
            "klf_function_instances{{function=\"{}\",version=\"{}\"}} {n}",
            escape(function),
            escape(version)
        );
    }
    per_function(
        &mut out,
        &scrape.functions,
        "klf_function_calls_total",
        "Calls this node served, per function version.",
        |s| s.stats.calls.to_string(),
    );
    family(
        &mut out,
        "klf_function_errors_total",
        "counter",
        "Calls this node served that failed, by error kind.",
    );
    for s in &scrape.functions {
        for (kind, n) in &s.stats.error_kinds {
            let _ = writeln!(
                out,
                "klf_function_errors_total{{{},kind=\"{}\"}} {n}",
                labels(s),
                escape(kind)
            );
        }
    }
    per_function(
        &mut out,
        &scrape.functions,
        "klf_function_execution_seconds_total",
        "Time spent inside function instances on this node.",
        |s| seconds(s.stats.cpu_us).to_string(),
    );
    family(
        &mut out,
        "klf_function_latency_seconds",
        "histogram",
        "Latency of the calls this node served, from taking the call to its answer.",
    );
    for s in &scrape.functions {
        let label = labels(s);
        for (bound, n) in LATENCY_BOUNDS_US
            .iter()
            .zip(s.cumulative(LATENCY_BOUNDS_US))
        {
            let _ = writeln!(
                out,
                "klf_function_latency_seconds_bucket{{{label},le=\"{}\"}} {n}",
                seconds(*bound)
            );
        }
        let _ = writeln!(
            out,
            "klf_function_latency_seconds_bucket{{{label},le=\"+Inf\"}} {}",
            s.stats.calls
        );
        let _ = writeln!(
            out,
            "klf_function_latency_seconds_sum{{{label}}} {}",
            seconds(s.latency_us_sum)
        );
        let _ = writeln!(
            out,
            "klf_function_latency_seconds_count{{{label}}} {}",
            s.stats.calls
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_actors::router::stats::{Served, StatsBook};
    use std::time::Duration;

    #[test]
    fn renders_counters_and_a_cumulative_histogram_with_escaped_labels() {
        let book = StatsBook::new();
        let version = semver::Version::new(1, 2, 0);
        for (latency_us, error) in [(50, None), (300, None), (2_000_000, Some("timeout"))] {
            book.record(Served {
                function: "odd\"name",
                version: &version,
                latency: Duration::from_micros(latency_us),
                execution: Duration::from_micros(10),
                error,
            });
        }
        let text = render(&Scrape {
            members: [("alive".to_string(), 3), ("down".to_string(), 1)].into(),
            catalog_records: 7,
            instances: [("odd\"name@1.2.0".to_string(), 1)].into(),
            functions: book.snapshots(),
        });
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        has("klf_members{state=\"alive\"} 3");
        has("klf_catalog_records 7");
        has("klf_function_instances{function=\"odd\\\"name\",version=\"1.2.0\"} 1");
        let l = "function=\"odd\\\"name\",version=\"1.2.0\"";
        has(&format!("klf_function_calls_total{{{l}}} 3"));
        has(&format!(
            "klf_function_errors_total{{{l},kind=\"timeout\"}} 1"
        ));
        has(&format!(
            "klf_function_latency_seconds_bucket{{{l},le=\"0.0001\"}} 1"
        ));
        has(&format!(
            "klf_function_latency_seconds_bucket{{{l},le=\"0.0005\"}} 2"
        ));
        has(&format!(
            "klf_function_latency_seconds_bucket{{{l},le=\"1\"}} 2"
        ));
        has(&format!(
            "klf_function_latency_seconds_bucket{{{l},le=\"2.5\"}} 3"
        ));
        has(&format!(
            "klf_function_latency_seconds_bucket{{{l},le=\"+Inf\"}} 3"
        ));
        has(&format!("klf_function_latency_seconds_count{{{l}}} 3"));
        has(&format!("klf_function_latency_seconds_sum{{{l}}} 2.00035"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {base} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
    }
}
