//! `klf roi [NAME] [--json]`: cost, value and ROI of one function or of the whole mesh, each line
//! with its basis (M measured, D declared) and a note of where it came from.

use std::fmt::Write as _;

use clap::Args;
use klf_actors::ledger::{Breakdown, Metric, Roi};

use crate::client::{ApiClient, ClientOptions};

#[derive(Debug, Args)]
pub struct RoiArgs {
    /// A function; without it, the whole mesh.
    pub name: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// Runs `klf roi`.
pub async fn run(args: RoiArgs) -> anyhow::Result<()> {
    let api = ApiClient::from_options(&args.client)?;
    let path = match &args.name {
        Some(name) => format!("/v1/roi/{}", encode_segment(name)),
        None => "/v1/roi".to_string(),
    };
    let roi: Roi = api.get_json(&path).await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&roi)?);
    } else {
        print!("{}", render(&roi));
    }
    Ok(())
}

/// Percent-encodes a path segment (function names are plain, but the argument is the user's).
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// USD with about four significant digits below a dollar, cents above.
fn usd(x: f64) -> String {
    if x == 0.0 {
        return "$0".into();
    }
    if x.abs() >= 1.0 {
        return format!("${x:.2}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(2, 12) as usize;
    let text = format!("{x:.digits$}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "0" || trimmed == "-0" {
        // Below the shown precision: say so rather than print a bare zero for a real cost.
        return "<$1e-12".into();
    }
    format!("${trimmed}")
}

fn breakdown(out: &mut String, title: &str, b: &Breakdown, width: usize) {
    let _ = writeln!(out, "{title}");
    for line in &b.lines {
        let _ = writeln!(
            out,
            "  {:width$}  {:>12}  {}  {}",
            line.label,
            usd(line.amount.value),
            line.amount.basis.letter(),
            line.amount.note
        );
    }
    let _ = writeln!(out, "  {:width$}  {:>12}", "total", usd(b.total));
}

fn metric(m: &Metric) -> String {
    match (m.value, m.unit.as_str()) {
        (None, _) => "-".into(),
        (Some(v), "ratio") => format!("{:.1}%", v * 100.0),
        (Some(v), unit) => format!("{v:.2} {unit}"),
    }
}

/// The table `klf roi` prints.
pub fn render(roi: &Roi) -> String {
    let mut out = String::new();
    let scope = match &roi.function {
        Some(name) => format!("function {name}"),
        None => format!("the mesh ({} function(s))", roi.functions),
    };
    let _ = writeln!(
        out,
        "ROI of {scope}: {} run(s), {} maintenance event(s); basis M = measured, D = declared",
        roi.runs, roi.events
    );
    let width = roi
        .cost
        .lines
        .iter()
        .chain(&roi.value.lines)
        .map(|l| l.label.len())
        .chain(roi.quality.iter().map(|m| m.label.len()))
        .max()
        .unwrap_or(5)
        .max(5);
    breakdown(&mut out, "COST (USD)", &roi.cost, width);
    breakdown(&mut out, "VALUE (USD)", &roi.value, width);
    let _ = writeln!(out, "QUALITY");
    for m in &roi.quality {
        let _ = writeln!(
            out,
            "  {:width$}  {:>12}  {}  {}",
            m.label,
            metric(m),
            m.basis.letter(),
            m.note
        );
    }
    // The measured ROI comes first: a declared guess (baseline hours, value per call) never
    // makes the headline without saying so.
    match roi.roi_measured {
        Some(r) => {
            let _ = writeln!(
                out,
                "ROI measured {r:.2} ({:.0}%): measured value − measured cost, over measured cost",
                r * 100.0
            );
        }
        None => {
            let _ = writeln!(
                out,
                "ROI measured -: nothing measured has cost anything yet"
            );
        }
    }
    match (roi.roi, roi.declared.is_empty()) {
        (Some(r), true) => {
            let _ = writeln!(out, "ROI {r:.2} ({:.0}%): {}", r * 100.0, roi.roi_note);
        }
        (Some(r), false) => {
            let _ = writeln!(
                out,
                "ROI with declared values {r:.2} ({:.0}%), DECLARED: {}; {}",
                r * 100.0,
                roi.declared.join(", "),
                roi.roi_note
            );
        }
        (None, _) => {
            let _ = writeln!(out, "ROI -: {}", roi.roi_note);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_actors::ledger::{FunctionInputs, Rates, RoiInputs, UsageInputs, roi};

    #[test]
    fn the_table_shows_every_line_with_its_basis_and_the_roi() {
        let inputs = RoiInputs {
            functions: vec![FunctionInputs {
                name: "fx".into(),
                usage: UsageInputs {
                    calls: 10,
                    errors: 1,
                    cpu_us: 2_000_000,
                    p99_us: 1500,
                    ..Default::default()
                },
                value_per_call: 0.01,
                memory_mb: 32,
                ..FunctionInputs::default()
            }],
            ..RoiInputs::default()
        };
        let text = render(&roi(Some("fx".into()), &inputs, &Rates::default()));
        assert!(text.starts_with("ROI of function fx: 0 run(s)"), "{text}");
        assert!(
            text.contains("invocations served")
                && text.contains("$0.09  D  9 successful call(s) of 10 (measured)"),
            "{text}"
        );
        assert!(text.contains("compute: CPU"), "{text}");
        assert!(text.contains("$0.000024  M"), "2 s × $0.000012\n{text}");
        assert!(
            text.contains("10.0%  M  1 error(s) in 10 call(s)"),
            "{text}"
        );
        assert!(text.contains("1.50 ms"), "{text}");
        // The measured ROI heads; the one with declared values says what was declared.
        let last: Vec<&str> = text.lines().rev().take(2).collect();
        assert!(last[1].starts_with("ROI measured "), "{text}");
        assert!(
            last[0].starts_with("ROI with declared values ")
                && last[0].contains("DECLARED: ")
                && last[0].contains("invocations served"),
            "{text}"
        );
    }

    #[test]
    fn amounts_keep_their_significant_digits() {
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(1234.567), "$1234.57");
        assert_eq!(usd(0.5), "$0.5");
        assert_eq!(usd(0.000024), "$0.000024");
        assert_eq!(usd(-2.0), "$-2.00");
    }
}
