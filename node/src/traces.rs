//! `klf trace`: one trace's waterfall, or the most recent traces, gathered from every member's
//! span ring over KLF (no collector needed).

use anyhow::bail;
use clap::Args;
use klf_actors::router::trace_ring::WaterfallRow;

use crate::api::types::{TraceList, TraceView};
use crate::client::{ApiClient, ClientOptions};
use crate::functions::urlencode;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The trace to show (32 hex digits, as `klf fn invoke --trace` prints).
    #[arg(required_unless_present = "recent", conflicts_with = "recent")]
    pub trace_id: Option<String>,
    /// List the most recent traces instead.
    #[arg(long)]
    pub recent: bool,
    /// With --recent: only traces that called this function.
    #[arg(long, requires = "recent")]
    pub function: Option<String>,
    /// With --recent: only traces with a failed span.
    #[arg(long, requires = "recent")]
    pub errors: bool,
    /// With --recent: at most this many traces (1 to 1000).
    #[arg(long, default_value_t = 20, requires = "recent")]
    pub limit: usize,
    #[command(flatten)]
    pub client: ClientOptions,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let api = ApiClient::from_options(&args.client)?;
    if let Some(trace_id) = &args.trace_id {
        let view: TraceView = api
            .get_json(&format!("/v1/traces/{}", urlencode(trace_id)))
            .await?;
        if args.client.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print!("{}", render_waterfall(&view.rows));
            warn_missing(&view.missing);
        }
        return Ok(());
    }
    if args.limit == 0 || args.limit > 1000 {
        bail!("--limit takes 1 to 1000, not {}", args.limit);
    }
    let mut path = format!("/v1/traces?limit={}", args.limit);
    if let Some(function) = &args.function {
        path.push_str(&format!("&function={}", urlencode(function)));
    }
    if args.errors {
        path.push_str("&errors=true");
    }
    let list: TraceList = api.get_json(&path).await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.traces.is_empty() {
        println!("no traces kept by any member (yet)");
    } else {
        println!(
            "{:<32}  {:<20} {:>10} {:>5} {:>6}  nodes",
            "trace", "function", "duration", "spans", "errors"
        );
        for trace in &list.traces {
            println!(
                "{:<32}  {:<20} {:>10} {:>5} {:>6}  {}",
                trace.trace_id,
                trace.function.as_deref().unwrap_or(&trace.root),
                micros(trace.duration_us),
                trace.spans,
                trace.errors,
                trace.nodes.len()
            );
        }
    }
    warn_missing(&list.missing);
    Ok(())
}

fn warn_missing(missing: &[String]) {
    if !missing.is_empty() {
        eprintln!(
            "note: no answer from {} (their spans are not shown)",
            missing.join(", ")
        );
    }
}

/// A duration for people: µs under a millisecond, else ms with one decimal.
fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

/// The waterfall as text: node, span (indented by depth), start offset, duration, status, and a
/// bar placed on the trace's time line.
pub fn render_waterfall(rows: &[WaterfallRow]) -> String {
    const BAR: usize = 30;
    let total = rows
        .iter()
        .map(|r| r.offset_us.saturating_add(r.span.duration_us))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = format!(
        "{:<12} {:<36} {:>10} {:>10}  {:<12} {}\n",
        "node", "span", "start", "duration", "status", "timeline"
    );
    for row in rows {
        let label = format!(
            "{}{} {}",
            "  ".repeat(row.depth.min(10)),
            row.span.name,
            row.span.function.as_deref().unwrap_or("")
        );
        let from = (row.offset_us as u128 * BAR as u128 / total as u128) as usize;
        let width = ((row.span.duration_us as u128 * BAR as u128 / total as u128) as usize).max(1);
        let bar = format!(
            "{}{}",
            " ".repeat(from.min(BAR)),
            "█".repeat(width.min(BAR.saturating_sub(from)).max(1))
        );
        out.push_str(&format!(
            "{:<12} {:<36} {:>10} {:>10}  {:<12} {}\n",
            row.span.node,
            label,
            micros(row.offset_us),
            micros(row.span.duration_us),
            row.span.error.as_deref().unwrap_or("ok"),
            bar
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_actors::router::trace_ring::RecordedSpan;

    #[test]
    fn the_waterfall_shows_node_depth_offset_duration_and_status() {
        let span = |id: &str, name: &str, node: &str, dur: u64, error: Option<&str>| RecordedSpan {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: None,
            name: name.into(),
            node: node.into(),
            function: Some("echo".into()),
            start_unix_us: 0,
            duration_us: dur,
            error: error.map(str::to_string),
            attributes: Default::default(),
        };
        let rows = [
            WaterfallRow {
                depth: 0,
                offset_us: 0,
                span: span("a", "klf.invoke", "n1", 2500, None),
            },
            WaterfallRow {
                depth: 1,
                offset_us: 500,
                span: span("b", "klf.serve", "n2", 800, Some("timeout")),
            },
        ];
        let text = render_waterfall(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("n1") && lines[1].contains("klf.invoke echo"),
            "{text}"
        );
        assert!(
            lines[1].contains("2.5 ms") && lines[1].contains(" ok "),
            "{text}"
        );
        assert!(
            lines[2].contains("  klf.serve echo") && lines[2].contains("500 µs"),
            "{text}"
        );
        assert!(
            lines[2].contains("800 µs") && lines[2].contains("timeout"),
            "{text}"
        );
    }
}
