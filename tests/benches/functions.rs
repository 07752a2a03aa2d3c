//! Invocation costs of functions on real in-process nodes, against the mesh's own floor in the
//! same run. Run with `cargo bench -p klf-tests --bench functions`.
//!
//! Measured on a two-node `LocalMesh` over loopback (mutual TLS, QUIC). Each node runs on its own
//! single-worker runtime, as two processes on this two-core machine would, and the bench's calls
//! are made on the runtime of the calling node; `KLF_BENCH_RUNTIME=shared` puts both nodes on one
//! shared two-worker runtime instead. `KLF_BENCH_ONLY=a|b` runs only the paths whose labels
//! contain `a` or `b`. Measured:
//! - the raw quinn floor: a new stream per 64-byte request with the mesh's TLS and QUIC settings;
//! - the KLF round trip: node0's transport actor sends a 64-byte `Ping` to node1 and gets the `Pong`
//!   (what every remote invoke rides on);
//! - cross-node JS: node0 invokes a trivial JavaScript function whose only instance is on node1;
//! - local JS: node1 invokes the same function, served by its own instance;
//! - each sequentially (p50, p99) and with 64 calls in flight (calls/s);
//! - cold start: the first call of a newly deployed function on the node that hosts it (artifact
//!   already replicated), and the sandbox's own start time of that instance;
//! - memory: the resident set of an idle `klf up` process, and the growth of this process per warm
//!   JavaScript instance (100 trivial functions started on one node).
//!
//! - cross-node native no-op: node0 invokes a native (Rust) built-in whose instance is on node1;
//!   and the same with the call spans kept in the span ring, as `klf up` does by default
//!   (`--trace-buffer`), so the ring's cost per call is read off the same run;
//! - the host side of that call in-process (node1's router serving an `Invoke`, no network): the
//!   host's own work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use klf_actors::mesh::{PeerAddr, TransportMsg};
use klf_actors::router::InvokeRequest;
use klf_proto::{Frame, Ping};
use klf_tests::{InProcessMesh, write_package};
use serde_json::json;

const WARMUP: usize = 1_000;
const MEASURED: usize = 10_000;
const IN_FLIGHT: usize = 64;
const PER_TASK: usize = 300;

const TRIVIAL: &str = "import { BaseFunction } from \"klf:base\";\nexport default class F extends BaseFunction { async execute(input) { return { n: input.n + 1 }; } }\n";

#[derive(Clone, Copy)]
enum Path {
    /// Raw quinn, a new stream per 64-byte request, with the mesh's TLS (floor A of the transport
    /// bench).
    Raw,
    Floor,
    /// The same Ping on the live connection from the caller's task (`TransportHandle`), the path
    /// remote invokes take.
    Direct,
    Invoke {
        from: usize,
    },
    /// An invoke while the mesh's call spans are built and kept in the span ring (`klf trace`).
    Traced {
        from: usize,
    },
    /// node1's router serving a peer's `Invoke` in-process (no network): the host's own cost.
    Serve,
}

/// Whether the call spans are built now: only while a `Path::Traced` call runs.
static SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps the mesh's call spans in the span ring while [`SPANS`] is set, as `klf up` does always.
fn install_span_ring() -> anyhow::Result<()> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let ring =
        klf_actors::router::trace_ring::install(klf_actors::router::trace_ring::DEFAULT_CAPACITY);
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(klf_actors::router::trace_ring::SharedRing(ring))
        .build();
    // Decided per span (not cached per callsite), so the other paths build no spans.
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target() == klf_actors::router::trace::TARGET
            && SPANS.load(std::sync::atomic::Ordering::Relaxed)
    });
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bench"))
        .with_filter(filter);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;
    Ok(())
}

fn spans(on: bool) {
    SPANS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// node0's direct transport path.
static LINK: std::sync::OnceLock<klf_actors::mesh::TransportHandle> = std::sync::OnceLock::new();

/// The raw floor's client connection.
static RAW: std::sync::OnceLock<quinn::Connection> = std::sync::OnceLock::new();

/// Where each node runs: `[node0, node1]`, two single-worker runtimes (as two processes would
/// be), or one shared two-worker runtime with `KLF_BENCH_RUNTIME=shared`.
static RUNTIMES: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();

struct Layout {
    nodes: [tokio::runtime::Handle; 2],
    separate: bool,
}

/// The node a path's caller sits on: calls "from node1" run on node1's runtime.
fn caller_node(path: Path) -> usize {
    match path {
        Path::Invoke { from } | Path::Traced { from } => from,
        Path::Serve => 1,
        Path::Raw | Path::Floor | Path::Direct => 0,
    }
}

/// One call of `path`, timed on the runtime of the node that makes it (the bench's own task runs
/// on node0; a call from node1 is handed to node1's runtime, outside the timed part).
async fn timed(
    mesh: &Arc<InProcessMesh>,
    path: Path,
    function: &'static str,
) -> anyhow::Result<Duration> {
    if matches!(path, Path::Traced { .. }) {
        spans(true);
        let took = timed_untraced(mesh, path, function).await;
        spans(false);
        return took;
    }
    timed_untraced(mesh, path, function).await
}

async fn timed_untraced(
    mesh: &Arc<InProcessMesh>,
    path: Path,
    function: &'static str,
) -> anyhow::Result<Duration> {
    let layout = RUNTIMES.get().context("no runtimes")?;
    if layout.separate && caller_node(path) == 1 {
        let mesh = mesh.clone();
        return layout.nodes[1]
            .spawn(async move {
                let t = Instant::now();
                once(&mesh, path, function).await?;
                anyhow::Ok(t.elapsed())
            })
            .await?;
    }
    let t = Instant::now();
    once(mesh, path, function).await?;
    Ok(t.elapsed())
}

async fn once(mesh: &InProcessMesh, path: Path, function: &str) -> anyhow::Result<()> {
    match path {
        Path::Raw => {
            let conn = RAW.get().context("raw floor not connected")?;
            let answer = klf_tests::floor::raw_request(conn, &[0; 64]).await?;
            anyhow::ensure!(
                answer.len() == 64,
                "raw floor echoed {} bytes",
                answer.len()
            );
            Ok(())
        }
        Path::Floor => {
            let to = PeerAddr {
                addr: mesh.nodes[1].identity().addr.clone(),
                node_id: Some(mesh.nodes[1].identity().node_id.clone()),
            };
            let frame = Frame::Ping(Ping {
                payload: vec![0; 64],
            });
            match ractor::call!(mesh.nodes[0].transport(), |reply| TransportMsg::Request {
                to,
                frame,
                reply
            })? {
                Ok(Frame::Pong(_)) => Ok(()),
                other => bail!("expected Pong, got {other:?}"),
            }
        }
        Path::Direct => {
            let link = LINK.get().context("no transport handle")?;
            let frame = Frame::Ping(Ping {
                payload: vec![0; 64],
            });
            match link
                .request_live(&mesh.nodes[1].identity().node_id, &frame)
                .await
            {
                Some(Ok(Frame::Pong(_))) => Ok(()),
                other => bail!("expected Pong, got {other:?}"),
            }
        }
        Path::Serve => {
            let invoke = klf_proto::Invoke {
                function: function.to_string(),
                version_range: "*".into(),
                input: b"{}".to_vec(),
                deadline_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64
                    + 5_000,
                idempotency_key: None,
                caller_principal: "bench".into(),
                call_depth: 0,
                trace: klf_proto::TraceContext::default(),
            };
            let reply = mesh.nodes[1].router().serve_remote(invoke).await;
            anyhow::ensure!(reply.outcome.is_ok(), "serve failed: {:?}", reply.outcome);
            Ok(())
        }
        Path::Invoke { from } | Path::Traced { from } => {
            let request = InvokeRequest::new(function, json!({"n": 1}), Duration::from_secs(5));
            mesh.nodes[from]
                .invoke(request)
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Sequential latency of every path, interleaved: each round runs every path once (starting at a
/// rotating one), so a burst of load on the machine hits all paths alike and the ratios between
/// them hold even when the absolute numbers swing.
async fn sequential_interleaved(
    mesh: &Arc<InProcessMesh>,
    paths: &[(&str, Path, &'static str)],
) -> anyhow::Result<Vec<Histogram<u64>>> {
    for &(_, path, function) in paths {
        for _ in 0..WARMUP {
            timed(mesh, path, function).await?;
        }
    }
    let mut histograms = paths
        .iter()
        .map(|_| Histogram::<u64>::new(3))
        .collect::<Result<Vec<_>, _>>()?;
    for round in 0..MEASURED {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let (_, path, function) = paths[i];
            let took = timed(mesh, path, function).await?;
            histograms[i].record(took.as_nanos() as u64)?;
        }
    }
    Ok(histograms)
}

async fn loaded(
    mesh: Arc<InProcessMesh>,
    path: Path,
    function: &'static str,
) -> anyhow::Result<f64> {
    let layout = RUNTIMES.get().context("no runtimes")?;
    let runtime = &layout.nodes[caller_node(path)];
    spans(matches!(path, Path::Traced { .. }));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let mesh = mesh.clone();
        tasks.spawn_on(
            async move {
                for _ in 0..PER_TASK {
                    once(&mesh, path, function).await?;
                }
                anyhow::Ok(())
            },
            runtime,
        );
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = (IN_FLIGHT * PER_TASK) as f64 / started.elapsed().as_secs_f64();
    spans(false);
    Ok(rate)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// RSS of an idle `klf up` process (release binary), after it settles.
fn idle_node_rss() -> anyhow::Result<u64> {
    let bin = klf_tests::processes::klf_bin();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("n1");
    let init = std::process::Command::new(bin)
        .args(["init", "--data"])
        .arg(&data)
        .args(["--name", "n1"])
        .output()?;
    if !init.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let udp = klf_tests::processes::free_udp_addr();
    let api = klf_tests::processes::free_tcp_addr();
    let mut child = std::process::Command::new(bin)
        .args(["up", "--data"])
        .arg(&data)
        .args(["--listen", &udp.to_string(), "--api", &api.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(api).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("klf up did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let start-up allocations settle (timers, first gossip rounds).
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    rss
}

async fn run() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let layout = RUNTIMES.get().context("no runtimes")?;
    let mesh = Arc::new(InProcessMesh::start_on_runtimes(&layout.nodes).await?);
    if !mesh
        .wait_all_alive(&[0, 1], 2, Duration::from_secs(10))
        .await
    {
        bail!("the mesh did not form");
    }
    // "trivial" with one replica placed on node1 (pick a name that places there).
    let node1 = mesh.nodes[1].identity().node_id.clone();
    let ids: Vec<String> = mesh
        .nodes
        .iter()
        .map(|n| n.identity().node_id.clone())
        .collect();
    let name = (0..100)
        .map(|i| format!("trivial-{i}"))
        .find(|n| {
            klf_actors::placement::hosts(n, ids.iter().map(String::as_str), 1) == [node1.as_str()]
        })
        .context("no name places on node1")?;
    let name: &'static str = Box::leak(name.into_boxed_str());
    mesh.nodes[0]
        .publish(
            write_package(
                work.path(),
                name,
                "1.0.0",
                "idempotent = true\n[limits]\nconcurrency = 4096",
                TRIVIAL,
            ),
            1,
            "bench",
        )
        .await?;
    let ready = Instant::now() + Duration::from_secs(10);
    while mesh.nodes[1]
        .invoke(InvokeRequest::new(
            name,
            json!({"n": 1}),
            Duration::from_secs(5),
        ))
        .await
        .is_err()
    {
        if Instant::now() > ready {
            bail!("{name} never became invocable on node1");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A native no-op placed on node1 too.
    let native = (0..100)
        .map(|i| format!("native-noop-{i}"))
        .find(|n| {
            klf_actors::placement::hosts(n, ids.iter().map(String::as_str), 1) == [node1.as_str()]
        })
        .context("no native name places on node1")?;
    let native: &'static str = Box::leak(native.into_boxed_str());
    mesh.nodes[0]
        .publish(
            write_package(
                work.path(),
                native,
                "1.0.0",
                "entry = \"native:noop\"\nidempotent = true\n[limits]\nconcurrency = 4096",
                "",
            ),
            1,
            "bench",
        )
        .await?;
    let ready = Instant::now() + Duration::from_secs(10);
    while mesh.nodes[0]
        .invoke(InvokeRequest::new(
            native,
            json!({}),
            Duration::from_secs(5),
        ))
        .await
        .is_err()
    {
        if Instant::now() > ready {
            bail!("{native} never became invocable");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The raw quinn floor between the same two nodes' credentials.
    let creds0 =
        klf_actors::node::DataDir::new(mesh.dir.path().join("node0")).load_credentials()?;
    let creds1 =
        klf_actors::node::DataDir::new(mesh.dir.path().join("node1")).load_credentials()?;
    // The floor's server runs where node1 runs, its client where node0 runs (here).
    let raw_server = {
        let _node1 = layout.nodes[1].enter();
        klf_tests::floor::FloorServer::start(&creds1, klf_tests::floor::ServerMode::Raw)?
    };
    let (raw_endpoint, raw_conn) = klf_tests::floor::floor_client(&creds0, raw_server.addr).await?;
    RAW.set(raw_conn)
        .map_err(|_| anyhow::anyhow!("raw floor connected twice"))?;
    LINK.set(ractor::call!(
        mesh.nodes[0].transport(),
        TransportMsg::Handle
    )?)
    .map_err(|_| anyhow::anyhow!("transport handle set twice"))?;
    let paths = [
        ("raw quinn floor (new stream per request)", Path::Raw, name),
        (
            "KLF Ping->Pong node0->node1 (live connection, caller's task)",
            Path::Direct,
            name,
        ),
        (
            "KLF Ping->Pong node0->node1 (transport actor)",
            Path::Floor,
            name,
        ),
        (
            "cross-node native no-op invoke",
            Path::Invoke { from: 0 },
            native,
        ),
        (
            "cross-node trivial JS invoke",
            Path::Invoke { from: 0 },
            name,
        ),
        ("local trivial JS invoke", Path::Invoke { from: 1 }, name),
        (
            "host side of a native invoke, in-process",
            Path::Serve,
            native,
        ),
        (
            "cross-node native no-op invoke, call spans in the ring",
            Path::Traced { from: 0 },
            native,
        ),
    ];
    // `KLF_BENCH_ONLY=native` (label substrings, `|`-separated) runs just the matching paths,
    // interleaved, and skips the rest: for profiling a path with `perf` or `strace -c`.
    if let Ok(only) = std::env::var("KLF_BENCH_ONLY") {
        let chosen: Vec<_> = paths
            .iter()
            .filter(|(label, _, _)| only.split('|').any(|part| label.contains(part)))
            .copied()
            .collect();
        let histograms = sequential_interleaved(&mesh, &chosen).await?;
        for ((label, _, _), h) in chosen.iter().zip(histograms) {
            println!(
                "{label}: p50 {:.1} µs, p99 {:.1} µs",
                micros(&h, 0.5),
                micros(&h, 0.99)
            );
        }
        mesh.shutdown().await;
        return Ok(());
    }
    println!(
        "\nsequential ({MEASURED} calls per path after {WARMUP} warm-up, the paths interleaved) and {IN_FLIGHT} in flight ({} calls):",
        IN_FLIGHT * PER_TASK
    );
    println!("| path | p50 | p99 | calls/s ({IN_FLIGHT} in flight) |\n|---|---|---|---|");
    let histograms = sequential_interleaved(&mesh, &paths).await?;
    let mut p50 = Vec::new();
    for ((label, path, function), h) in paths.into_iter().zip(histograms) {
        let rate = loaded(mesh.clone(), path, function).await?;
        println!(
            "| {label} | {:.1} µs | {:.1} µs | {:.0} |",
            micros(&h, 0.5),
            micros(&h, 0.99),
            rate
        );
        p50.push(micros(&h, 0.5));
    }
    // The local call on its own: interleaved with cross-node calls it always starts on a thread
    // the network paths just left parked, which measures the wake-up more than the call.
    let local = paths[5];
    let alone = sequential_interleaved(&mesh, &[local]).await?;
    println!(
        "| {} alone (not interleaved) | {:.1} µs | {:.1} µs | |",
        local.0,
        micros(&alone[0], 0.5),
        micros(&alone[0], 0.99)
    );
    println!(
        "\nratios (p50): cross-node native / raw quinn floor {:.2}x (target 1.5x); native / direct KLF round trip {:.2}x; cross-node JS / raw floor {:.2}x; local JS {:.1} µs alone, {:.1} µs interleaved (target < 50 µs)",
        p50[3] / p50[0],
        p50[3] / p50[1],
        p50[4] / p50[0],
        micros(&alone[0], 0.5),
        p50[5]
    );
    println!(
        "call spans in the ring: native invoke {:.2}x without them (+{:.1} µs at p50); traced native / raw quinn floor {:.2}x",
        p50[7] / p50[3],
        p50[7] - p50[3],
        p50[7] / p50[0]
    );
    raw_server.close().await;
    raw_endpoint.close(0u32.into(), b"bench done");

    // Cold start: deploy fresh functions placed on node1 and time their first call from node1.
    let mut colds = Histogram::<u64>::new(3)?;
    let mut sandbox_starts = Histogram::<u64>::new(3)?;
    let mut cold_names = Vec::new();
    for i in 0..400 {
        let candidate = format!("cold-{i}");
        if klf_actors::placement::hosts(&candidate, ids.iter().map(String::as_str), 1)
            == [node1.as_str()]
        {
            cold_names.push(candidate);
        }
        if cold_names.len() == 20 {
            break;
        }
    }
    for cold in &cold_names {
        mesh.nodes[1]
            .publish(
                write_package(work.path(), cold, "1.0.0", "", TRIVIAL),
                1,
                "bench",
            )
            .await?;
        // Timed where node1 runs: the first call arrives at the node that hosts the function.
        let (on_node1, name) = (mesh.clone(), cold.clone());
        let took = layout.nodes[1]
            .spawn(async move {
                let t = Instant::now();
                on_node1.nodes[1]
                    .invoke(InvokeRequest::new(
                        &name,
                        json!({"n": 1}),
                        Duration::from_secs(5),
                    ))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::Ok(t.elapsed())
            })
            .await??;
        colds.record(took.as_nanos() as u64)?;
        if let Some(hosted) = mesh.nodes[1].router().instances().get(cold) {
            sandbox_starts.record(hosted.cold_start.as_nanos() as u64)?;
        }
    }
    println!(
        "\ncold start ({} functions, first call on the hosting node): p50 {:.2} ms, p99 {:.2} ms; sandbox start alone p50 {:.2} ms (target < 20 ms)",
        cold_names.len(),
        micros(&colds, 0.5) / 1000.0,
        micros(&colds, 0.99) / 1000.0,
        micros(&sandbox_starts, 0.5) / 1000.0
    );

    // Memory per warm instance: start 100 more on node1 and watch this process's RSS.
    let me = std::process::id();
    let before = rss_kib(me)?;
    let mut warm = 0;
    for i in 0..2000 {
        let candidate = format!("warm-{i}");
        if klf_actors::placement::hosts(&candidate, ids.iter().map(String::as_str), 1)
            != [node1.as_str()]
        {
            continue;
        }
        mesh.nodes[1]
            .publish(
                write_package(work.path(), &candidate, "1.0.0", "", TRIVIAL),
                1,
                "bench",
            )
            .await?;
        mesh.nodes[1]
            .invoke(InvokeRequest::new(
                &candidate,
                json!({"n": 1}),
                Duration::from_secs(5),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        warm += 1;
        if warm == 100 {
            break;
        }
    }
    let after = rss_kib(me)?;
    println!(
        "memory: {warm} warm JS instances grew this process by {} KiB = {:.0} KiB per instance (catalog records and artifacts included)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / warm.max(1) as f64
    );
    let idle = tokio::task::spawn_blocking(idle_node_rss).await??;
    println!(
        "memory: idle `klf up` node RSS {:.1} MiB (target < 40 MiB)",
        idle as f64 / 1024.0
    );
    mesh.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    install_span_ring()?;
    let runtime = |name: &str, workers: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()
    };
    // Each node on its own single-worker runtime by default: two nodes on a two-core machine, as
    // two `klf up` processes would run, so that neither waits for threads the other has parked.
    let shared = std::env::var("KLF_BENCH_RUNTIME").is_ok_and(|v| v == "shared");
    let (node0, node1) = if shared {
        (runtime("nodes", 2)?, None)
    } else {
        (runtime("node0", 1)?, Some(runtime("node1", 1)?))
    };
    let handles = [
        node0.handle().clone(),
        node1.as_ref().unwrap_or(&node0).handle().clone(),
    ];
    println!(
        "runtime layout: {}",
        if shared {
            "both nodes on one shared 2-worker runtime (KLF_BENCH_RUNTIME=shared)"
        } else {
            "each node on its own 1-worker runtime"
        }
    );
    RUNTIMES
        .set(Layout {
            nodes: handles,
            separate: !shared,
        })
        .map_err(|_| anyhow::anyhow!("runtimes set twice"))?;
    let result = node0.block_on(async { tokio::spawn(run()).await? });
    // Dropping a runtime from inside another blocks; shut node1's down from here.
    if let Some(node1) = node1 {
        node1.shutdown_timeout(Duration::from_secs(2));
    }
    result
}
