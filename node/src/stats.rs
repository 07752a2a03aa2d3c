//! `klf fn stats` and `klf fn rollback`: how deployed functions behave, and serving an earlier
//! version when a new one misbehaves.

use klf_actors::router::FunctionStats;

use crate::api::types::{Deployment, RollbackRequest};
use crate::client::{ApiClient, ClientOptions};

/// `klf fn stats [NAME] [--json]`: the mesh-wide statistics per function@version.
pub async fn stats(name: Option<String>, client: ClientOptions) -> anyhow::Result<()> {
    let api = ApiClient::from_options(&client)?;
    let path = match &name {
        Some(name) => format!("/v1/stats?function={}", crate::functions::urlencode(name)),
        None => "/v1/stats".to_string(),
    };
    let stats: Vec<FunctionStats> = api.get_json(&path).await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    if stats.is_empty() {
        match name {
            Some(name) => println!("no calls of {name} served yet"),
            None => println!("no calls served yet"),
        }
        return Ok(());
    }
    print!("{}", table(&stats));
    Ok(())
}

/// The human table of `klf fn stats`.
fn table(stats: &[FunctionStats]) -> String {
    let width = stats.iter().map(|s| s.id().len()).max().unwrap_or(8).max(8);
    let mut out = format!(
        "{:width$}  {:>8}  {:>7}  {:>6}  {:>9}  {:>9}  {:>9}  {:>13}  ERRORS BY KIND\n",
        "FUNCTION", "CALLS", "ERRORS", "ERR%", "P50", "P99", "CPU", "LAST 30 S"
    );
    for s in stats {
        let kinds: Vec<String> = s
            .error_kinds
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        out.push_str(&format!(
            "{:width$}  {:>8}  {:>7}  {:>5.1}%  {:>9}  {:>9}  {:>9}  {:>13}  {}\n",
            s.id(),
            s.calls,
            s.errors,
            s.error_rate() * 100.0,
            micros(s.p50_us),
            micros(s.p99_us),
            micros(s.cpu_us),
            format!("{}/{} err", s.recent_calls, s.recent_errors),
            if kinds.is_empty() {
                "-".to_string()
            } else {
                kinds.join(" ")
            }
        ));
    }
    out
}

/// A duration in µs, readably.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// `klf fn rollback NAME VERSION`: serve VERSION (published) until the next deploy.
pub async fn rollback(name: String, version: String, client: ClientOptions) -> anyhow::Result<()> {
    let api = ApiClient::from_options(&client)?;
    let answer: Deployment = api
        .post_json(
            &format!(
                "/v1/functions/{}/rollback",
                crate::functions::urlencode(&name)
            ),
            &RollbackRequest {
                version: version.clone(),
            },
        )
        .await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let served = answer.version.as_deref().unwrap_or(&version);
        println!(
            "{} now serves {served} on every node (pinned until the next deploy, which serves the highest version again)",
            answer.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_rates_latencies_and_error_kinds() {
        let stats = vec![FunctionStats {
            function: "quotes".into(),
            version: "2.0.0".into(),
            calls: 40,
            errors: 30,
            error_kinds: [("user_error".to_string(), 30)].into_iter().collect(),
            p50_us: 850,
            p99_us: 12_400,
            cpu_us: 2_500_000,
            recent_calls: 12,
            recent_errors: 9,
            ..Default::default()
        }];
        let text = table(&stats);
        let line = text.lines().nth(1).unwrap();
        for part in [
            "quotes@2.0.0",
            "40",
            "75.0%",
            "850 µs",
            "12.4 ms",
            "2.50 s",
            "12/9 err",
            "user_error=30",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }
}
