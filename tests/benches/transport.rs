//! Request/response latency and throughput of the KLF transport against raw quinn floors, on
//! loopback with the mesh's own mutual TLS material and QUIC transport settings.
//!
//! Run with `cargo bench -p klf-tests --bench transport`. One run measures:
//!
//! - floor A: raw quinn, a new bidirectional stream per request, 64 bytes each way (the stream
//!   pattern the transport uses);
//! - floor B: raw quinn, one long-lived bidirectional stream per caller, length-prefixed 64-byte
//!   messages (what a pooled-stream design could reach at best);
//! - floor A+frames: floor A with KLF frames (`stream::exchange` on the client, `read_frame` /
//!   `write_frame` on the server) but no actor: adds framing and codec costs;
//! - KLF: node0's transport actor sends `Ping` to node1 (`TransportMsg::Request`, `call!` without a
//!   timeout) and gets `Pong` back;
//! - rows that explain the gap between KLF and the floor:
//!   - floor A+frames with a `yield_now()` before each request (lets quinn's connection driver
//!     run between two requests, as the transport's extra task hops do);
//!   - a relay actor that, like the transport's `deliver`, spawns one task per request running
//!     `stream::exchange` (against the floor A+frames server), with the time of each step;
//!   - `stream::exchange` without an actor on a connection of its own to node1's real transport
//!     (after `Hello`): the transport's server side alone;
//!   - floor A+frames and the relay again, reading each received stream to its end (FIN) on both
//!     sides, so that quinn sends no STOP_SENDING when the stream is dropped;
//!   - a `call!` to an actor that answers at once, and to one that answers from a spawned task;
//! - the cost of encoding and decoding the Ping and Pong frames.
//!
//! For the paths whose connection the bench holds, the client side's UDP datagrams sent and
//! received per call are counted from quinn's connection statistics.
//!
//! Each path is measured sequentially (warm-up, then timed calls one after the other) and with 64
//! requests in flight (64 tasks each making sequential calls; wall-clock throughput). The paths are
//! measured in interleaved rounds so that each sees the same machine states: on a 2-core machine
//! the latency of a path depends on how the scheduler places its tasks on the two workers, and that
//! drifts during a run. Every loop runs on spawned tasks of a multi-thread runtime, never on the
//! main thread. `KLF_BENCH_WORKERS=1` runs the same bench on one worker (a diagnostic).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use klf_actors::mesh::stream::exchange;
use klf_actors::mesh::{PeerAddr, TransportError, TransportMsg};
use klf_actors::node::DataDir;
use klf_actors::security::NodeCredentials;
use klf_proto::{Frame, Hello, Limits, Ping, Pong};
use klf_tests::InProcessMesh;
use klf_tests::floor::{FloorServer, MAX_MESSAGE, ServerMode, floor_client};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// Bytes of payload in each request and each answer.
const PAYLOAD: usize = 64;
/// Sequential calls before measuring, then measured calls (split over the rounds).
const WARMUP: usize = 2_000;
const MEASURED: usize = 10_000;
/// Rounds the measurements are split into, interleaving the paths.
const ROUNDS: usize = 10;
/// Sequential calls before each round's measured ones.
const ROUND_WARMUP: usize = 100;
/// Concurrent callers and the total number of measured calls they make together.
const IN_FLIGHT: usize = 64;
const CONCURRENT_TOTAL: usize = 50_000;
/// Warm-up calls each concurrent caller makes before the clock starts (each round).
const CONCURRENT_WARMUP: usize = 10;
/// Iterations of the encode/decode micro-benchmark.
const CODEC_ITERATIONS: u32 = 200_000;
/// The 1.3x target of the issue: KLF p50 against the floor's p50.
const TARGET_RATIO: f64 = 1.3;

/// The transport's QUIC settings (`quic_transport_config` in `actors/mesh/src/transport.rs`, which
/// is private): replicated so that the floors run under the same flow-control and keep-alive rules.
/// A no-op actor: answers every request with the frame it got, either inline or from a spawned
/// task (as the transport's `deliver` does).
struct Echo {
    spawn_reply: bool,
}

struct EchoMsg(Frame, RpcReplyPort<Frame>);

impl Actor for Echo {
    type Msg = EchoMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<EchoMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<EchoMsg>,
        msg: EchoMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let EchoMsg(frame, reply) = msg;
        if self.spawn_reply {
            tokio::spawn(async move {
                let _ = reply.send(frame);
            });
        } else {
            let _ = reply.send(frame);
        }
        Ok(())
    }
}

/// The client of the "FIN read on both sides" rows. Since `stream::exchange` itself reads the
/// answer stream's end (the fix these rows motivated), it is that function.
async fn exchange_drained(
    conn: &Connection,
    frame: &Frame,
    limits: &Limits,
) -> Result<Frame, TransportError> {
    exchange(conn, frame, limits).await
}

/// What the transport does per request, without its routing: a `call!` to an actor that spawns a
/// task running `stream::exchange` on a connection and answering the reply port from it. The
/// answer carries when the actor got the message, when the task started and when the exchange
/// ended, to split the request's time into its steps.
struct Relay {
    /// Use [`exchange_drained`] instead of `stream::exchange`.
    drained: bool,
}

type RelayAnswer = Result<(Frame, [Instant; 3]), TransportError>;

struct RelayMsg(Frame, RpcReplyPort<RelayAnswer>);

/// The steps of a relay request: `call!` to the actor's handler, handler to the spawned task,
/// the exchange, and the reply port back to the caller.
const RELAY_STEPS: [&str; 4] = [
    "call! -> actor handler",
    "handler -> spawned task runs",
    "exchange() on the stream",
    "reply port -> caller resumes",
];

impl Actor for Relay {
    type Msg = RelayMsg;
    type State = Connection;
    type Arguments = Connection;

    async fn pre_start(
        &self,
        _: ActorRef<RelayMsg>,
        conn: Connection,
    ) -> Result<Connection, ActorProcessingErr> {
        Ok(conn)
    }

    async fn handle(
        &self,
        _: ActorRef<RelayMsg>,
        msg: RelayMsg,
        conn: &mut Connection,
    ) -> Result<(), ActorProcessingErr> {
        let RelayMsg(frame, reply) = msg;
        let received = Instant::now();
        let conn = conn.clone();
        let drained = self.drained;
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = if drained {
                exchange_drained(&conn, &frame, &Limits::default()).await
            } else {
                exchange(&conn, &frame, &Limits::default()).await
            };
            let done = Instant::now();
            let _ = reply.send(answer.map(|frame| (frame, [received, started, done])));
        });
        Ok(())
    }
}

/// Connects to a node's transport as `creds` and says `Hello`, as the transport's own dial does.
async fn direct_client(
    creds: &NodeCredentials,
    mesh_id: &str,
    server: SocketAddr,
) -> anyhow::Result<(Endpoint, Connection)> {
    let (endpoint, conn) = floor_client(creds, server).await?;
    let hello = Frame::Hello(Hello {
        protocol_versions: klf_proto::SUPPORTED_VERSIONS.to_vec(),
        node_id: creds.node_id.clone(),
        mesh_id: mesh_id.to_string(),
        features: Vec::new(),
    });
    match exchange(&conn, &hello, &Limits::default()).await? {
        Frame::HelloAck(_) => Ok((endpoint, conn)),
        other => bail!("expected HelloAck, got {}", other.kind_name()),
    }
}

/// One caller of one path. Each concurrent task gets its own (see [`Client::fork`]).
enum Client {
    /// Floor A: a new stream per request on a shared connection.
    Raw(Connection),
    /// Floor A+frames: `stream::exchange` on a shared connection.
    Frames(Connection, Limits),
    /// The same, yielding to the scheduler before each request (lets the connection driver run
    /// between two requests, as the transport's extra task hops do).
    FramesAfterYield(Connection),
    /// [`exchange_drained`] against a server that also reads each request stream to its end.
    FramesDrained(Connection),
    /// Floor B: this caller's own long-lived stream.
    LongLived {
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
    },
    /// KLF: a request through node0's transport actor.
    Klf(ActorRef<TransportMsg>, PeerAddr),
    /// A `call!` to a no-op actor.
    Actor(ActorRef<EchoMsg>),
    /// A `call!` to the relay actor; the sequential caller also times the steps.
    Relay {
        actor: ActorRef<RelayMsg>,
        conn: Connection,
        steps: Option<Box<[Histogram<u64>; 4]>>,
        recording: bool,
    },
}

fn ping() -> Frame {
    Frame::Ping(Ping {
        payload: vec![0; PAYLOAD],
    })
}

fn expect_pong(frame: Frame) -> anyhow::Result<()> {
    match frame {
        Frame::Pong(pong) if pong.payload.len() == PAYLOAD => Ok(()),
        Frame::Pong(pong) => bail!("Pong of {} bytes, expected {PAYLOAD}", pong.payload.len()),
        other => bail!("expected Pong, got {}", other.kind_name()),
    }
}

impl Client {
    async fn long_lived(conn: Connection) -> anyhow::Result<Self> {
        let (send, recv) = conn.open_bi().await?;
        Ok(Self::LongLived { conn, send, recv })
    }

    /// Another caller of the same path (floor B: on a stream of its own).
    async fn fork(&self) -> anyhow::Result<Self> {
        Ok(match self {
            Self::Raw(conn) => Self::Raw(conn.clone()),
            Self::Frames(conn, limits) => Self::Frames(conn.clone(), *limits),
            Self::FramesAfterYield(conn) => Self::FramesAfterYield(conn.clone()),
            Self::FramesDrained(conn) => Self::FramesDrained(conn.clone()),
            Self::LongLived { conn, .. } => Self::long_lived(conn.clone()).await?,
            Self::Klf(transport, to) => Self::Klf(transport.clone(), to.clone()),
            Self::Actor(actor) => Self::Actor(actor.clone()),
            Self::Relay { actor, conn, .. } => Self::Relay {
                actor: actor.clone(),
                conn: conn.clone(),
                steps: None,
                recording: false,
            },
        })
    }

    fn relay(actor: ActorRef<RelayMsg>, conn: Connection) -> Self {
        Self::Relay {
            actor,
            conn,
            steps: Some(Box::new(std::array::from_fn(|_| histogram()))),
            recording: false,
        }
    }

    /// The QUIC connection this caller uses, when the bench holds it (for packet counts).
    fn connection(&self) -> Option<&Connection> {
        match self {
            Self::Raw(conn)
            | Self::Frames(conn, _)
            | Self::FramesAfterYield(conn)
            | Self::FramesDrained(conn) => Some(conn),
            Self::LongLived { conn, .. } | Self::Relay { conn, .. } => Some(conn),
            Self::Klf(..) | Self::Actor(_) => None,
        }
    }

    /// Starts or stops timing the steps of relay calls (no-op for other paths).
    fn record_steps(&mut self, on: bool) {
        if let Self::Relay { recording, .. } = self {
            *recording = on;
        }
    }

    /// One request and its answer.
    async fn call(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Raw(conn) => {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&[0u8; PAYLOAD]).await?;
                send.finish()?;
                let answer = recv.read_to_end(MAX_MESSAGE).await?;
                ensure!(answer.len() == PAYLOAD, "answer of {} bytes", answer.len());
            }
            Self::Frames(conn, limits) => expect_pong(exchange(conn, &ping(), limits).await?)?,
            Self::FramesAfterYield(conn) => {
                tokio::task::yield_now().await;
                expect_pong(exchange(conn, &ping(), &Limits::default()).await?)?;
            }
            Self::FramesDrained(conn) => {
                expect_pong(exchange_drained(conn, &ping(), &Limits::default()).await?)?;
            }
            Self::LongLived { send, recv, .. } => {
                let mut message = [0u8; 4 + PAYLOAD];
                message[..4].copy_from_slice(&(PAYLOAD as u32).to_be_bytes());
                send.write_all(&message).await?;
                let mut len = [0u8; 4];
                recv.read_exact(&mut len).await?;
                let n = u32::from_be_bytes(len) as usize;
                ensure!(n == PAYLOAD, "answer of {n} bytes");
                recv.read_exact(&mut message[4..]).await?;
            }
            Self::Klf(transport, to) => {
                let answer = ractor::call!(transport, |reply| TransportMsg::Request {
                    to: to.clone(),
                    frame: ping(),
                    reply,
                })
                .map_err(|e| anyhow!("transport actor: {e}"))??;
                expect_pong(answer)?;
            }
            Self::Actor(actor) => {
                let answer = ractor::call!(actor, |reply| EchoMsg(ping(), reply))
                    .map_err(|e| anyhow!("echo actor: {e}"))?;
                ensure!(matches!(answer, Frame::Ping(_)), "echo changed the frame");
            }
            Self::Relay {
                actor,
                steps,
                recording,
                ..
            } => {
                let start = Instant::now();
                let (answer, [received, started, done]) =
                    ractor::call!(actor, |reply| RelayMsg(ping(), reply))
                        .map_err(|e| anyhow!("relay actor: {e}"))??;
                let end = Instant::now();
                if let (Some(steps), true) = (steps, *recording) {
                    let times = [
                        received - start,
                        started - received,
                        done - started,
                        end - done,
                    ];
                    for (h, t) in steps.iter_mut().zip(times) {
                        h.saturating_record(nanos(t));
                    }
                }
                expect_pong(answer)?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        if let Self::LongLived { mut send, .. } = self {
            let _ = send.finish();
        }
    }
}

/// Latencies in nanoseconds, 1 ns to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1_000.0
}
/// One path under test and what has been measured of it so far.
struct Path {
    name: &'static str,
    client: Client,
    sequential: Histogram<u64>,
    loaded: Histogram<u64>,
    loaded_time: Duration,
    /// Sequential p50 of each round, in µs (shows how stable the path is).
    round_p50: Vec<f64>,
    /// Throughput of each load round, in calls/s.
    round_rate: Vec<f64>,
    /// UDP datagrams sent and received by the client connection during measured sequential calls,
    /// and during load rounds (paths whose connection the bench holds).
    seq_datagrams: Datagrams,
    load_datagrams: Datagrams,
}

/// UDP datagrams sent and received on a connection.
#[derive(Clone, Copy, Default)]
struct Datagrams {
    tx: u64,
    rx: u64,
}

impl Datagrams {
    fn of(conn: Option<&Connection>) -> Self {
        conn.map_or_else(Self::default, |c| {
            let stats = c.stats();
            Self {
                tx: stats.udp_tx.datagrams,
                rx: stats.udp_rx.datagrams,
            }
        })
    }

    /// Adds what was counted since `before`.
    fn add_since(&mut self, before: Self, now: Self) {
        self.tx += now.tx - before.tx;
        self.rx += now.rx - before.rx;
    }

    /// "sent/received" per call.
    fn per_call(&self, calls: u64) -> String {
        let calls = calls.max(1) as f64;
        format!(
            "{:.2} / {:.2}",
            self.tx as f64 / calls,
            self.rx as f64 / calls
        )
    }
}

impl Path {
    fn new(name: &'static str, client: Client) -> Self {
        Self {
            name,
            client,
            sequential: histogram(),
            loaded: histogram(),
            loaded_time: Duration::ZERO,
            round_p50: Vec::new(),
            round_rate: Vec::new(),
            seq_datagrams: Datagrams::default(),
            load_datagrams: Datagrams::default(),
        }
    }

    /// Datagrams sent / received per call, for paths whose connection the bench holds.
    fn datagrams_per_call(&self, load: bool) -> String {
        match (self.client.connection(), load) {
            (None, _) => "-".to_string(),
            (Some(_), false) => self.seq_datagrams.per_call(self.sequential.len()),
            (Some(_), true) => self.load_datagrams.per_call(self.loaded.len()),
        }
    }

    fn calls_per_sec(&self) -> f64 {
        self.loaded.len() as f64 / self.loaded_time.as_secs_f64()
    }

    fn p50(&self) -> f64 {
        micros(&self.sequential, 0.50)
    }

    fn p99(&self) -> f64 {
        micros(&self.sequential, 0.99)
    }

    /// One sequential round: a short re-warm-up, then timed calls one after the other.
    async fn sequential_round(&mut self) -> anyhow::Result<()> {
        for _ in 0..ROUND_WARMUP {
            self.client.call().await?;
        }
        let mut h = histogram();
        let before = Datagrams::of(self.client.connection());
        self.client.record_steps(true);
        for _ in 0..MEASURED / ROUNDS {
            let start = Instant::now();
            self.client.call().await?;
            h.saturating_record(nanos(start.elapsed()));
        }
        self.client.record_steps(false);
        self.seq_datagrams
            .add_since(before, Datagrams::of(self.client.connection()));
        self.round_p50.push(micros(&h, 0.50));
        self.sequential.add(&h).context("merging histograms")?;
        Ok(())
    }

    /// One load round: 64 tasks each making sequential calls, timed from a common start.
    async fn load_round(&mut self) -> anyhow::Result<()> {
        let per_task = CONCURRENT_TOTAL / ROUNDS / IN_FLIGHT;
        let barrier = Arc::new(tokio::sync::Barrier::new(IN_FLIGHT + 1));
        let mut tasks = Vec::with_capacity(IN_FLIGHT);
        for _ in 0..IN_FLIGHT {
            let mut caller = self.client.fork().await?;
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let warm = async {
                    for _ in 0..CONCURRENT_WARMUP {
                        caller.call().await?;
                    }
                    anyhow::Ok(())
                }
                .await;
                // Always reach the barrier, or the others would wait forever.
                barrier.wait().await;
                warm?;
                let mut h = histogram();
                for _ in 0..per_task {
                    let start = Instant::now();
                    caller.call().await?;
                    h.saturating_record(nanos(start.elapsed()));
                }
                caller.close().await;
                anyhow::Ok(h)
            }));
        }
        barrier.wait().await;
        let start = Instant::now();
        let before = Datagrams::of(self.client.connection());
        let mut round = histogram();
        for task in tasks {
            let h = task.await.context("a load task panicked")??;
            round.add(&h).context("merging histograms")?;
        }
        let elapsed = start.elapsed();
        self.load_datagrams
            .add_since(before, Datagrams::of(self.client.connection()));
        self.round_rate
            .push(round.len() as f64 / elapsed.as_secs_f64());
        self.loaded_time += elapsed;
        self.loaded.add(&round).context("merging histograms")?;
        Ok(())
    }
}

/// Measures every path in interleaved rounds, so that each path sees the same machine states (the
/// scheduler's placement of tasks on the two workers drifts during a run).
async fn measure(paths: &mut [Path]) -> anyhow::Result<()> {
    for path in paths.iter_mut() {
        for _ in 0..WARMUP {
            path.client
                .call()
                .await
                .with_context(|| format!("{}: warm-up", path.name))?;
        }
    }
    let n = paths.len();
    for round in 0..ROUNDS {
        let started = Instant::now();
        // Rotate the order so that no path always runs right after the same other one.
        for i in 0..n {
            let path = &mut paths[(round + i) % n];
            path.sequential_round()
                .await
                .with_context(|| format!("{}: sequential", path.name))?;
        }
        for i in 0..n {
            let path = &mut paths[(round + i) % n];
            path.load_round()
                .await
                .with_context(|| format!("{}: {IN_FLIGHT} in flight", path.name))?;
        }
        eprintln!(
            "  round {}/{ROUNDS} in {:.1} s",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Mean time of encoding a Ping, decoding it, encoding the Pong and decoding that: the codec work
/// of one KLF request, both sides together.
fn codec_round_nanos() -> anyhow::Result<f64> {
    let limits = Limits::default();
    let start = Instant::now();
    for _ in 0..CODEC_ITERATIONS {
        let request = klf_proto::encode(&ping(), &limits)?;
        let (frame, _) = klf_proto::decode(std::hint::black_box(&request), &limits)?;
        let Frame::Ping(p) = frame else {
            bail!("decoded a different frame")
        };
        let answer = klf_proto::encode(&Frame::Pong(Pong { payload: p.payload }), &limits)?;
        let (frame, _) = klf_proto::decode(std::hint::black_box(&answer), &limits)?;
        std::hint::black_box(frame);
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(CODEC_ITERATIONS))
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn print_report(paths: &[Path], workers: usize, codec_nanos: f64) {
    println!();
    println!(
        "transport bench: {PAYLOAD}-byte request/response on loopback, mutual TLS (ALPN klf/1), \
         {workers} runtime workers"
    );
    println!(
        "sequential: {WARMUP} warm-up + {MEASURED} measured calls per path; load: {IN_FLIGHT} tasks \
         in flight, {} calls per path; {ROUNDS} interleaved rounds",
        paths.first().map_or(0, |p| p.loaded.len())
    );
    println!();
    println!("sequential (one call at a time):");
    println!();
    println!(
        "| {:<46} | {:>8} | {:>8} | {:>8} | {:>16} | {:>14} |",
        "path", "p50", "p99", "mean", "round p50s", "dgrams tx / rx"
    );
    println!(
        "|{:-<48}|{:->10}|{:->10}|{:->10}|{:->18}|{:->16}|",
        "", "", "", "", "", ""
    );
    for p in paths {
        let (lo, hi) = min_max(&p.round_p50);
        println!(
            "| {:<46} | {:>5.1} µs | {:>5.1} µs | {:>5.1} µs | {:>5.1} – {:>5.1} µs | {:>14} |",
            p.name,
            p.p50(),
            p.p99(),
            p.sequential.mean() / 1_000.0,
            lo,
            hi,
            p.datagrams_per_call(false),
        );
    }
    println!();
    println!("{IN_FLIGHT} calls in flight:");
    println!();
    println!(
        "| {:<46} | {:>8} | {:>15} | {:>8} | {:>9} | {:>14} |",
        "path", "calls/s", "round rates", "p50", "p99", "dgrams tx / rx"
    );
    println!(
        "|{:-<48}|{:->10}|{:->17}|{:->10}|{:->11}|{:->16}|",
        "", "", "", "", "", ""
    );
    for p in paths {
        let (lo, hi) = min_max(&p.round_rate);
        println!(
            "| {:<46} | {:>8.0} | {:>5.0}k – {:>5.0}k | {:>5.0} µs | {:>6.0} µs | {:>14} |",
            p.name,
            p.calls_per_sec(),
            lo / 1_000.0,
            hi / 1_000.0,
            micros(&p.loaded, 0.50),
            micros(&p.loaded, 0.99),
            p.datagrams_per_call(true),
        );
    }
    for p in paths {
        if let Client::Relay {
            steps: Some(steps), ..
        } = &p.client
        {
            println!();
            println!("steps of a call, sequential, p50 / mean: {}", p.name);
            for (name, h) in RELAY_STEPS.iter().zip(steps.iter()) {
                println!(
                    "  {name:<30} {:>6.1} µs / {:>6.1} µs",
                    micros(h, 0.50),
                    h.mean() / 1_000.0
                );
            }
        }
    }
    println!();
    println!(
        "codec: encode+decode of the Ping and of the Pong (one request's frames, both sides): {codec_nanos:.0} ns"
    );

    let find = |prefix: &str| paths.iter().find(|p| p.name.starts_with(prefix));
    let (Some(a), Some(b), Some(klf)) = (find("floor A:"), find("floor B:"), find("KLF:")) else {
        return;
    };
    println!();
    println!("ratios:");
    println!("  KLF / floor A   seq p50   {:.2}x", klf.p50() / a.p50());
    println!("  KLF / floor A   seq p99   {:.2}x", klf.p99() / a.p99());
    println!(
        "  KLF / floor A   calls/s   {:.2}x",
        klf.calls_per_sec() / a.calls_per_sec()
    );
    println!(
        "  KLF / floor A   load p50  {:.2}x",
        micros(&klf.loaded, 0.50) / micros(&a.loaded, 0.50)
    );
    println!("  KLF / floor B   seq p50   {:.2}x", klf.p50() / b.p50());
    if let Some(frames) = find("floor A+frames:") {
        println!(
            "  KLF / floor A+frames seq p50 {:.2}x",
            klf.p50() / frames.p50()
        );
    }
    if let Some(fixed) = find("relay actor+spawn, FIN read") {
        println!(
            "  relay actor+spawn with FIN read / floor A seq p50 {:.2}x (the transport's pattern \
             without STOP_SENDING)",
            fixed.p50() / a.p50()
        );
    }
    println!();
    let ratio = klf.p50() / a.p50();
    println!(
        "target, KLF p50 within {TARGET_RATIO}x of the floor: against floor A (same stream pattern) \
         {ratio:.2}x -> {}",
        if ratio <= TARGET_RATIO {
            "MET"
        } else {
            "NOT MET"
        }
    );
    let ratio_b = klf.p50() / b.p50();
    println!(
        "  stricter reference, floor B (one long-lived stream): {ratio_b:.2}x -> {}",
        if ratio_b <= TARGET_RATIO {
            "met"
        } else {
            "not met"
        }
    );
}

async fn run(workers: usize) -> anyhow::Result<()> {
    let setup = Instant::now();
    let mesh = InProcessMesh::start(2)
        .await
        .context("starting a 2-node mesh")?;
    let creds0 = DataDir::new(mesh.dir.path().join("node0")).load_credentials()?;
    let creds1 = DataDir::new(mesh.dir.path().join("node1")).load_credentials()?;

    let raw_server = FloorServer::start(&creds1, ServerMode::Raw)?;
    let frames_server = FloorServer::start(&creds1, ServerMode::Frames)?;
    let long_server = FloorServer::start(&creds1, ServerMode::LongLived)?;
    let drained_server = FloorServer::start(&creds1, ServerMode::FramesDrained)?;
    let (raw_ep, raw_conn) = floor_client(&creds0, raw_server.addr).await?;
    let (frames_ep, frames_conn) = floor_client(&creds0, frames_server.addr).await?;
    let (long_ep, long_conn) = floor_client(&creds0, long_server.addr).await?;
    let (direct_ep, direct_conn) = direct_client(
        &creds0,
        &mesh.nodes[0].settings().mesh_id,
        mesh.nodes[1].local_addr(),
    )
    .await
    .context("direct connection to node1's transport")?;
    let (relay_ep, relay_conn) = floor_client(&creds0, frames_server.addr).await?;
    let (yield_ep, yield_conn) = floor_client(&creds0, frames_server.addr).await?;
    let (relay, relay_handle) =
        Actor::spawn(None, Relay { drained: false }, relay_conn.clone()).await?;
    let (drained_ep, drained_conn) = floor_client(&creds0, drained_server.addr).await?;
    let (relay_drained_ep, relay_drained_conn) = floor_client(&creds0, drained_server.addr).await?;
    let (relay_drained, relay_drained_handle) =
        Actor::spawn(None, Relay { drained: true }, relay_drained_conn.clone()).await?;

    let node1 = &mesh.nodes[1];
    let to = PeerAddr {
        addr: node1.identity().addr.clone(),
        node_id: Some(node1.identity().node_id.clone()),
    };
    let mut klf = Client::Klf(mesh.nodes[0].transport().clone(), to);
    // The first request may dial; retry briefly until the connection is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(error) = klf.call().await {
        if Instant::now() > deadline {
            return Err(error.context("KLF warm-up: node0 cannot reach node1"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (inline_echo, inline_handle) = Actor::spawn(None, Echo { spawn_reply: false }, ()).await?;
    let (spawn_echo, spawn_handle) = Actor::spawn(None, Echo { spawn_reply: true }, ()).await?;
    eprintln!("set up in {:.1} s", setup.elapsed().as_secs_f64());

    let mut paths = vec![
        Path::new(
            "floor A: quinn, new stream per request",
            Client::Raw(raw_conn.clone()),
        ),
        Path::new(
            "floor B: quinn, one long-lived stream",
            Client::long_lived(long_conn.clone()).await?,
        ),
        Path::new(
            "floor A+frames: stream::exchange, no actor",
            Client::Frames(frames_conn.clone(), Limits::default()),
        ),
        Path::new(
            "floor A+frames, yield_now() before each call",
            Client::FramesAfterYield(yield_conn.clone()),
        ),
        Path::new(
            "relay actor+spawn -> floor A+frames server",
            Client::relay(relay.clone(), relay_conn.clone()),
        ),
        Path::new(
            "direct exchange(), no actor -> node1 transport",
            Client::Frames(direct_conn.clone(), Limits::default()),
        ),
        Path::new("KLF: transport actor, Request Ping->Pong", klf),
        Path::new(
            "floor A+frames, FIN read on both sides",
            Client::FramesDrained(drained_conn.clone()),
        ),
        Path::new(
            "relay actor+spawn, FIN read on both sides",
            Client::relay(relay_drained.clone(), relay_drained_conn.clone()),
        ),
        Path::new(
            "no network: call! to actor, inline reply",
            Client::Actor(inline_echo.clone()),
        ),
        Path::new(
            "no network: call! to actor, spawned reply",
            Client::Actor(spawn_echo.clone()),
        ),
    ];
    let measured = measure(&mut paths).await;
    let codec_nanos = codec_round_nanos();
    if let (Ok(()), Ok(codec_nanos)) = (&measured, &codec_nanos) {
        print_report(&paths, workers, *codec_nanos);
    }

    // Clean up whatever happened: actors, streams, floor endpoints, nodes; the mesh's temp dir is
    // removed when `mesh` drops.
    for path in paths {
        path.client.close().await;
    }
    inline_echo.stop(None);
    spawn_echo.stop(None);
    relay.stop(None);
    relay_drained.stop(None);
    let _ = inline_handle.await;
    let _ = spawn_handle.await;
    let _ = relay_handle.await;
    let _ = relay_drained_handle.await;
    for (endpoint, conn) in [
        (raw_ep, raw_conn),
        (frames_ep, frames_conn),
        (long_ep, long_conn),
        (direct_ep, direct_conn),
        (relay_ep, relay_conn),
        (yield_ep, yield_conn),
        (drained_ep, drained_conn),
        (relay_drained_ep, relay_drained_conn),
    ] {
        conn.close(VarInt::from_u32(0), b"bench done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    for server in [raw_server, frames_server, long_server, drained_server] {
        server.close().await;
    }
    for node in &mesh.nodes {
        node.shutdown().await;
    }
    drop(mesh);
    measured?;
    codec_nanos?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Worker threads: the number of cores unless KLF_BENCH_WORKERS says otherwise (a diagnostic:
    // with 1 worker no wake-up crosses threads).
    let workers = match std::env::var("KLF_BENCH_WORKERS") {
        Ok(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .context("KLF_BENCH_WORKERS must be a positive integer")?,
        Err(_) => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let started = Instant::now();
    // The main thread only waits for the result: every measured loop runs on the runtime's workers.
    let result = runtime.block_on(async { tokio::spawn(run(workers)).await });
    runtime.shutdown_timeout(Duration::from_secs(5));
    result.context("the bench task panicked")??;
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
