//! The validator's performance test: a function runs on its examples in a real sandbox instance
//! `runs` times each, then under a short load step at 1, 8 and 32 calls in flight; the figures
//! (p50, p99, peak heap, largest output, calls/s) are compared with the budget (the requirement's
//! latency budget and the manifest's `[limits]`).
//!
//! The pure parts ([`percentile`], [`PerfFigures::over_budget`]) decide; [`measure`] only runs the
//! calls and times them. Every deploy path uses the same test (see `docs/chef.md`, "The
//! validator").

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sandbox::{CallMeta, Instance, SandboxError};

/// How many times each example runs, unless told otherwise.
pub const DEFAULT_RUNS: u32 = 50;
/// Calls in flight at each load step.
pub const LOAD_STEPS: [usize; 3] = [1, 8, 32];
/// Calls issued at one load step: this many per call in flight (at least [`MIN_LOAD_CALLS`]).
const LOAD_CALLS_PER_SLOT: usize = 2;
const MIN_LOAD_CALLS: usize = 16;
/// A load step stops issuing calls after this long, so a slow function cannot make it long.
const LOAD_STEP_CAP: Duration = Duration::from_secs(2);
/// The timed runs stop after this long (the figures then count the runs made), so a slow function
/// cannot hold a deploy for `runs` × its timeout.
const RUNS_CAP: Duration = Duration::from_secs(60);

/// What the figures must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfBudget {
    /// The p99 one call may take (the requirement's `latency_budget_ms`), if any.
    pub latency_ms: Option<u64>,
    /// `[limits] timeout_ms`: the p99 must stay under it too.
    pub timeout_ms: u64,
    /// `[limits] memory_mb`, in bytes.
    pub memory_bytes: u64,
    /// The largest output the sandbox returns.
    pub max_output_bytes: u64,
}

/// Throughput at one load step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadStep {
    pub in_flight: u32,
    pub calls: u32,
    pub calls_per_sec: f64,
}

/// What the performance test measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfFigures {
    /// Timed calls (examples × runs).
    pub runs: u32,
    pub examples: u32,
    pub p50_us: u64,
    pub p99_us: u64,
    /// The instance's heap at its highest, after any call.
    pub peak_memory_bytes: u64,
    /// The largest output, as JSON text.
    pub max_output_bytes: u64,
    pub load: Vec<LoadStep>,
    /// Examples that failed other than by the function's own error (a timeout, memory, a host or
    /// dependency failure), with the error: the first failure of each.
    pub failures: Vec<(String, String)>,
    /// How long the whole test took.
    pub elapsed_ms: u64,
}

impl PerfFigures {
    /// The best throughput of the load steps: the "scalability" figure of the ROI.
    pub fn calls_per_sec(&self) -> Option<f64> {
        self.load
            .iter()
            .map(|s| s.calls_per_sec)
            .fold(None, |best, x| Some(best.map_or(x, |b: f64| b.max(x))))
    }

    /// Every way the figures exceed `budget`, each a sentence naming the measured value and the
    /// budget; empty when within it.
    pub fn over_budget(&self, budget: &PerfBudget) -> Vec<String> {
        let mut over = Vec::new();
        let p99_ms = self.p99_us as f64 / 1000.0;
        let of = format!(
            "{} run(s) of {} example(s)",
            self.runs,
            self.examples.max(1)
        );
        if let Some(latency) = budget.latency_ms
            && self.p99_us > latency.saturating_mul(1000)
        {
            over.push(format!(
                "p99 latency {p99_ms:.1} ms is over the latency budget of {latency} ms ({of})"
            ));
        }
        if self.p99_us >= budget.timeout_ms.saturating_mul(1000) {
            over.push(format!(
                "p99 latency {p99_ms:.1} ms reaches the [limits] timeout_ms of {} ({of})",
                budget.timeout_ms
            ));
        }
        if self.peak_memory_bytes > budget.memory_bytes {
            over.push(format!(
                "peak memory {:.1} MiB is over the [limits] memory_mb of {:.0}",
                self.peak_memory_bytes as f64 / (1 << 20) as f64,
                budget.memory_bytes as f64 / (1 << 20) as f64
            ));
        }
        if self.max_output_bytes > budget.max_output_bytes {
            over.push(format!(
                "the largest output, {} bytes, is over the limit of {} bytes",
                self.max_output_bytes, budget.max_output_bytes
            ));
        }
        for (example, error) in &self.failures {
            over.push(format!("example {example} fails: {error}"));
        }
        over
    }
}

/// The `p`-th percentile (0 < p ≤ 100) of `sorted` by nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `examples` on `instance` `runs` times each (within a minute in all), then the load steps;
/// `timeout` bounds each call. Failed calls are recorded (the first failure of each example), not
/// retried.
pub async fn measure(
    instance: Arc<Instance>,
    examples: &[(String, Value)],
    runs: u32,
    timeout: Duration,
) -> PerfFigures {
    let started = Instant::now();
    let mut times = Vec::with_capacity(examples.len() * runs as usize);
    let mut peak_memory = instance.heap_bytes() as u64;
    let mut max_output = 0u64;
    let mut failures: Vec<(String, String)> = Vec::new();
    'examples: for (name, input) in examples {
        for _ in 0..runs {
            if started.elapsed() > RUNS_CAP {
                break 'examples;
            }
            let begun = Instant::now();
            let outcome = instance
                .execute(input.clone(), CallMeta::with_timeout(timeout))
                .await;
            times.push(begun.elapsed());
            peak_memory = peak_memory.max(instance.heap_bytes() as u64);
            match outcome {
                Ok(output) => max_output = max_output.max(output.to_string().len() as u64),
                // The function's own refusal is an answer (an example may show one).
                Err(SandboxError::User { .. }) => {}
                Err(error) => {
                    if !failures.iter().any(|(n, _)| n == name) {
                        failures.push((name.clone(), error.to_string()));
                    }
                    // A failing example is not timed again: its failure is the finding.
                    break;
                }
            }
        }
    }
    times.sort_unstable();
    let inputs: Vec<Value> = examples
        .iter()
        .filter(|(name, _)| !failures.iter().any(|(n, _)| n == name))
        .map(|(_, input)| input.clone())
        .collect();
    let mut load = Vec::new();
    if !inputs.is_empty() {
        for in_flight in LOAD_STEPS {
            load.push(load_step(&instance, &inputs, in_flight, timeout).await);
            peak_memory = peak_memory.max(instance.heap_bytes() as u64);
        }
    }
    PerfFigures {
        runs: times.len() as u32,
        examples: examples.len() as u32,
        p50_us: percentile(&times, 50.0).as_micros() as u64,
        p99_us: percentile(&times, 99.0).as_micros() as u64,
        peak_memory_bytes: peak_memory,
        max_output_bytes: max_output,
        load,
        failures,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// `in_flight` workers share a queue of calls over `inputs`; calls/s counts the calls that
/// answered (a failure is an answer too: it is throughput that is measured here).
async fn load_step(
    instance: &Arc<Instance>,
    inputs: &[Value],
    in_flight: usize,
    timeout: Duration,
) -> LoadStep {
    let total = (in_flight * LOAD_CALLS_PER_SLOT).max(MIN_LOAD_CALLS);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inputs = Arc::new(inputs.to_vec());
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (instance, next, inputs) = (instance.clone(), next.clone(), inputs.clone());
            tokio::spawn(async move {
                let mut done = 0u32;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total || started.elapsed() > LOAD_STEP_CAP {
                        return done;
                    }
                    let input = inputs[i % inputs.len()].clone();
                    let _: Result<Value, SandboxError> = instance
                        .execute(input, CallMeta::with_timeout(timeout))
                        .await;
                    done += 1;
                }
            })
        })
        .collect();
    let mut calls = 0u32;
    for worker in workers {
        calls += worker.await.unwrap_or(0);
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    LoadStep {
        in_flight: in_flight as u32,
        calls,
        calls_per_sec: f64::from(calls) / seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&hundred, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&hundred, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&hundred, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&ms(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&ms(&[1, 2]), 50.0), Duration::from_millis(1));
        assert_eq!(percentile(&ms(&[1, 2]), 99.0), Duration::from_millis(2));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
        assert_eq!(percentile(&ms(&[3, 4]), 0.0), Duration::from_millis(3));
    }

    fn figures(p99_ms: u64) -> PerfFigures {
        PerfFigures {
            runs: 50,
            examples: 1,
            p50_us: 1000,
            p99_us: p99_ms * 1000,
            peak_memory_bytes: 1 << 20,
            max_output_bytes: 100,
            load: vec![
                LoadStep {
                    in_flight: 1,
                    calls: 16,
                    calls_per_sec: 500.0,
                },
                LoadStep {
                    in_flight: 8,
                    calls: 16,
                    calls_per_sec: 900.0,
                },
            ],
            failures: Vec::new(),
            elapsed_ms: 10,
        }
    }

    const BUDGET: PerfBudget = PerfBudget {
        latency_ms: Some(20),
        timeout_ms: 1000,
        memory_bytes: 32 << 20,
        max_output_bytes: 1 << 20,
    };

    #[test]
    fn within_the_budget_nothing_is_over() {
        assert!(figures(20).over_budget(&BUDGET).is_empty());
        assert_eq!(figures(20).calls_per_sec(), Some(900.0));
        assert!(
            figures(500)
                .over_budget(&PerfBudget {
                    latency_ms: None,
                    ..BUDGET
                })
                .is_empty()
        );
    }

    #[test]
    fn each_overrun_is_named_with_the_measured_value_and_the_budget() {
        assert_eq!(
            figures(21).over_budget(&BUDGET),
            ["p99 latency 21.0 ms is over the latency budget of 20 ms (50 run(s) of 1 example(s))"]
        );
        let over = figures(1000).over_budget(&BUDGET);
        assert_eq!(over.len(), 2, "{over:?}");
        assert!(over[1].contains("reaches the [limits] timeout_ms of 1000"));
        let mut big = figures(1);
        big.peak_memory_bytes = 40 << 20;
        big.max_output_bytes = 2 << 20;
        big.failures.push(("named".into(), "boom".into()));
        let over = big.over_budget(&BUDGET);
        assert_eq!(
            over,
            [
                "peak memory 40.0 MiB is over the [limits] memory_mb of 32",
                "the largest output, 2097152 bytes, is over the limit of 1048576 bytes",
                "example named fails: boom",
            ]
        );
        assert_eq!(
            PerfFigures {
                load: vec![],
                ..figures(1)
            }
            .calls_per_sec(),
            None
        );
    }
}
