//! The Chef against a real model: a real llama.cpp server (xllamacpp) serving a real small model
//! (SmolLM2-135M-Instruct) over its OpenAI-compatible API, a real `klf up` node pointed at it with
//! `KLF_MODEL_BASE_URL`, and `klf chef --provider openai` through the real CLI.
//!
//! A 135M-parameter model cannot be relied on to write correct code, nor to pick the right
//! recipe; what it does is ramble, get cut off, answer JSON of the wrong shape and take its time.
//! So the test asserts only what must hold for any model: every run ends well within its deadline
//! with an explicit outcome (deployed, built, no-match, or failed with reasons), the CLI's exit
//! status matches the outcome, the model's tokens streamed in and were shown as progress, no
//! exchange generated more than its `max_tokens`, and the node keeps serving afterwards.
//!
//! It needs the model, so it is ignored by default:
//!
//! ```sh
//! eval "$(bash tests/model/setup.sh)"   # sets KLF_REAL_MODEL and KLF_REAL_MODEL_PYTHON
//! cargo test -p klf-tests --test chef_real_model -- --ignored --nocapture
//! ```
//!
//! `KLF_REAL_MODEL_THREADS` (default 1) sets the model server's CPU threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use klf_tests::processes::{free_tcp_addr, free_udp_addr, klf, klf_bin, klf_json};
use serde_json::Value;

/// Each run's deadline, as given to `klf chef --deadline`.
const DEADLINE: Duration = Duration::from_secs(90);
/// How much later than its deadline a run may end: the CLI's own start, the node's answer.
const GRACE: Duration = Duration::from_secs(15);
/// `max_tokens` per stage: small, so a rambling model is cut off within seconds.
const MAX_TOKENS: [(&str, u32); 3] = [("interpret", 160), ("write-tests", 256), ("generate", 384)];
/// Longest the model server may take to load and answer `/health`.
const MODEL_START: Duration = Duration::from_secs(60);
/// The model's context (tokens): the interpreter's prompt lists every recipe of the library, and
/// a conversation keeps up to three answers and two repair prompts.
const MODEL_CONTEXT: u32 = 8192;

const HOW: &str = "run `eval \"$(bash tests/model/setup.sh)\"` first: it sets KLF_REAL_MODEL \
                   and KLF_REAL_MODEL_PYTHON";

/// A child process that is killed (and reaped) when dropped, whatever happens to the test.
struct Reaped {
    child: Child,
    name: &'static str,
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        eprintln!("[{}] stopped", self.name);
    }
}

/// `tests/model/serve.py` serving the model on a free loopback port.
struct ModelServer {
    _process: Reaped,
    base_url: String,
    log: PathBuf,
}

impl ModelServer {
    fn start(dir: &Path) -> Self {
        let model = std::env::var("KLF_REAL_MODEL")
            .unwrap_or_else(|_| panic!("KLF_REAL_MODEL is not set: {HOW}"));
        let python = std::env::var("KLF_REAL_MODEL_PYTHON")
            .unwrap_or_else(|_| panic!("KLF_REAL_MODEL_PYTHON is not set: {HOW}"));
        assert!(Path::new(&model).is_file(), "no model at {model}: {HOW}");
        let threads = std::env::var("KLF_REAL_MODEL_THREADS").unwrap_or_else(|_| "1".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("model/serve.py");
        let log = dir.join("model-server.log");
        let started = Instant::now();
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--model", &model, "--port", "0", "--threads", &threads])
            .args(["--ctx", &MODEL_CONTEXT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("model server log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("stdout");
        let process = Reaped {
            child,
            name: "model server",
        };
        // The launcher prints `listening URL` once the model is loaded; read it on a thread so
        // the wait has a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(MODEL_START).unwrap_or_else(|_| {
            panic!(
                "the model server did not start within {MODEL_START:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("the model server printed {url:?}: {e}"));
        let until = started + MODEL_START;
        while http_get(addr, "/health").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < until,
                "the model server at {url} never answered /health:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "[model server] {url} ready in {:.2} s ({threads} threads, context {MODEL_CONTEXT})",
            started.elapsed().as_secs_f64()
        );
        Self {
            _process: process,
            base_url: format!("{url}/v1"),
            log,
        }
    }

    /// What llama.cpp logged for each request it finished (a request its client gave up on
    /// is cancelled and logs no timings).
    fn requests(&self) -> Vec<Served> {
        served(&self.log_text())
    }

    /// How many requests the server started on.
    fn asked(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("launch_slot_"))
            .count()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One request as the model server's log tells it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Served {
    prompt_tokens: u64,
    prompt_ms: f64,
    generated_tokens: u64,
    generated_ms: f64,
}

/// Reads llama.cpp's `print_timing` lines: `prompt eval time = X ms / N tokens` then
/// `eval time = X ms / N tokens`, one pair per request it finished.
fn served(log: &str) -> Vec<Served> {
    let timing = |line: &str| -> Option<(f64, u64)> {
        let rest = line.split_once(" time =")?.1;
        let (ms, rest) = rest.split_once(" ms /")?;
        let tokens = rest.split_whitespace().next()?;
        Some((ms.trim().parse().ok()?, tokens.parse().ok()?))
    };
    let mut out = Vec::new();
    let mut current: Option<Served> = None;
    for line in log.lines().filter(|l| l.contains("print_timing")) {
        if line.contains("prompt eval time") {
            let (ms, tokens) = timing(line).unwrap_or_default();
            current = Some(Served {
                prompt_tokens: tokens,
                prompt_ms: ms,
                ..Served::default()
            });
        } else if line.contains("| task")
            && line.contains(" eval time")
            && let (Some(mut request), Some((ms, tokens))) = (current.take(), timing(line))
        {
            request.generated_tokens = tokens;
            request.generated_ms = ms;
            out.push(request);
        }
    }
    out
}

/// A minimal HTTP/1.0 GET on loopback: the status and body, or `None` if nothing answered.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A `klf up` node whose environment points its `openai` provider at the model server.
struct Node {
    process: Reaped,
    data: PathBuf,
    api: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, model: &ModelServer) -> Self {
        let data = dir.join("n1");
        let data_arg = data.to_string_lossy().into_owned();
        let out = klf(&["init", "--data", &data_arg, "--name", "n1"]);
        assert!(
            out.status.success(),
            "klf init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let api = free_tcp_addr();
        let log = dir.join("n1.log");
        let out = std::fs::File::create(&log).expect("node log");
        let child = Command::new(klf_bin())
            .args(["up", "--data", &data_arg, "--name", "n1"])
            .args(["--listen", &free_udp_addr().to_string()])
            .args(["--api", &api.to_string()])
            .env("KLF_MODEL_BASE_URL", &model.base_url)
            .env("KLF_MODEL", "smollm2-135m-instruct")
            .env_remove("KLF_MODEL_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env(
                "RUST_LOG",
                "info,quinn=warn,quinn_proto=warn,rustls=warn,klf_chef=debug,klf_model=debug",
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("node log"))
            .stderr(out)
            .spawn()
            .expect("klf up");
        let mut node = Self {
            process: Reaped {
                child,
                name: "klf up",
            },
            data,
            api,
            log,
        };
        node.wait_healthy(Duration::from_secs(30));
        node
    }

    fn data(&self) -> String {
        self.data.to_string_lossy().into_owned()
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let until = Instant::now() + timeout;
        while http_get(self.api, "/healthz").is_none_or(|(status, _)| status != 200) {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                panic!("klf up exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < until,
                "klf up not healthy after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the node logged about the model since `from` (a byte offset of its log): each
    /// unusable answer with its problem, each request shape the server refused.
    fn model_lines(&self, from: usize) -> Vec<String> {
        let log = self.log_text();
        log.get(from..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("klf_model") || l.contains("unusable"))
            .map(str::to_string)
            .collect()
    }
}

/// One finished `klf chef` run as the CLI showed it.
struct ChefCli {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `klf chef REQUEST --provider openai … EXTRA`, killing it (and failing) if it outlives
/// its deadline by more than [`GRACE`]: a run that hangs is the one thing this test must catch.
fn chef(node: &Node, request: &str, extra: &[&str]) -> ChefCli {
    let deadline = format!("{}s", DEADLINE.as_secs());
    let mut args: Vec<String> = ["chef", request, "--provider", "openai", "--deploy"]
        .into_iter()
        .map(str::to_string)
        .collect();
    args.extend(["--deadline".into(), deadline, "--data".into(), node.data()]);
    for (stage, n) in MAX_TOKENS {
        args.extend(["--max-tokens".into(), format!("{stage}={n}")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    eprintln!("\n$ klf {}", args.join(" "));
    let started = Instant::now();
    let child = Command::new(klf_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("klf chef");
    let mut process = Reaped {
        child,
        name: "klf chef",
    };
    // Read both pipes on threads so a chatty run never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        process
            .child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        process
            .child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let limit = DEADLINE + GRACE;
    let status = loop {
        if let Some(status) = process.child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = process.child.kill();
            let _ = process.child.wait();
            panic!(
                "klf chef still running {limit:?} after it started (deadline {DEADLINE:?}); \
                 stdout so far:\n{}\nnode log:\n{}",
                stdout.join().unwrap_or_default(),
                node.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let run = ChefCli {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        took,
    };
    eprintln!(
        "{}{}[{} after {:.1} s]",
        run.stdout,
        run.stderr,
        run.status,
        took.as_secs_f64()
    );
    run
}

/// The outcome the CLI printed, checked against its exit status and the documented messages.
fn outcome(run: &ChefCli) -> &'static str {
    let out = &run.stdout;
    let (name, succeeds, error) = if out.contains("\ndeployed:   ") {
        ("deployed", true, None)
    } else if out.contains("\nbuilt:      ") {
        ("built", true, None)
    } else if out.contains("\nno recipe fits: ") {
        (
            "no-match",
            false,
            Some("no recipe fits the request; nothing was built"),
        )
    } else if out.contains("\nfailed:\n") {
        (
            "failed",
            false,
            Some("the chef could not build a function that passes its tests"),
        )
    } else {
        panic!(
            "no explicit outcome (deployed, built, no recipe fits, failed):\n{out}\n{}",
            run.stderr
        );
    };
    assert_eq!(
        run.status.success(),
        succeeds,
        "a {name} run exits {}: {}",
        if succeeds { "0" } else { "non-zero" },
        run.status
    );
    if let Some(error) = error {
        assert!(run.stderr.contains(error), "{name}: {}", run.stderr);
    }
    if name == "failed" {
        let reasons = out
            .split_once("\nfailed:\n")
            .map(|(_, r)| r.trim())
            .unwrap_or_default();
        assert!(
            !reasons.is_empty(),
            "a failed run names its reasons:\n{out}"
        );
    }
    name
}

/// The progress lines of streamed model tokens: `  … STAGE   N tokens, R tokens/s, S s`.
fn streamed_tokens(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("… "))
        .filter_map(|l| {
            let (_, rest) = l.split_once(char::is_whitespace)?;
            let n = rest.trim_start().split_once(" tokens,")?.0;
            n.trim().rsplit(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
#[ignore = "needs the real model: run `eval \"$(bash tests/model/setup.sh)\"`, then `cargo test -p klf-tests --test chef_real_model -- --ignored`"]
fn klf_chef_against_a_real_small_model_always_ends_within_its_deadline_with_an_outcome() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = ModelServer::start(dir.path());
    let node = Node::start(dir.path(), &model);

    let runs = [
        // A request a recipe fits: the model has to name it, with its parameters.
        ("Analyze market data and find opportunities", &[][..]),
        // The model writes the requirement, the tests and the code itself.
        (
            "Triple a number: give x, get back x times three",
            &["--fresh"][..],
        ),
    ];
    let cap = MAX_TOKENS
        .iter()
        .map(|(_, n)| u64::from(*n))
        .max()
        .unwrap_or(0);
    let mut outcomes = Vec::new();
    for (request, extra) in runs {
        let (asked_before, served_before) = (model.asked(), model.requests().len());
        let logged_before = node.log_text().len();
        let run = chef(&node, request, extra);
        for line in node.model_lines(logged_before) {
            eprintln!("[klf up] {line}");
        }
        let name = outcome(&run);
        assert!(
            run.took < DEADLINE + GRACE,
            "the run took {:?}, its deadline is {DEADLINE:?}",
            run.took
        );
        // The model really was asked.
        assert!(
            model.asked() > asked_before,
            "the model server got no request for {request:?}:\n{}",
            node.log_text()
        );
        // Whatever it generated streamed in, each exchange within its max_tokens, and the CLI
        // counted it.
        let served = &model.requests()[served_before..];
        for exchange in served {
            assert!(
                exchange.generated_tokens <= cap,
                "an exchange generated {} tokens, past every --max-tokens: {exchange:?}",
                exchange.generated_tokens
            );
        }
        let generated: u64 = served.iter().map(|r| r.generated_tokens).sum();
        let shown = streamed_tokens(&run.stdout);
        if generated > 0 {
            assert!(
                shown.iter().any(|n| *n > 0),
                "the model generated {generated} tokens but no progress line counted them:\n{}",
                run.stdout
            );
        }
        assert!(
            shown.iter().all(|n| *n <= cap),
            "a progress line counted more tokens than max_tokens allows: {shown:?}"
        );
        let prompt: u64 = served.iter().map(|r| r.prompt_tokens).sum();
        let prompt_ms: f64 = served.iter().map(|r| r.prompt_ms).sum();
        let generated_ms: f64 = served.iter().map(|r| r.generated_ms).sum();
        eprintln!(
            "[model server] {} requests ({} finished): {prompt} prompt tokens at {:.0}/s, \
             {generated} generated at {:.1}/s",
            model.asked() - asked_before,
            served.len(),
            prompt as f64 * 1000.0 / prompt_ms.max(1.0),
            generated as f64 * 1000.0 / generated_ms.max(1.0),
        );
        outcomes.push((
            request,
            name,
            run.took,
            generated,
            shown.iter().max().copied(),
        ));

        // The node keeps serving: its members and its functions.
        let members = klf_json(&["members", "--json", "--data", &node.data()]);
        assert!(
            members
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["name"] == "n1" && m["state"] == "alive")),
            "{members}"
        );
        let functions = klf_json(&["fn", "ls", "--json", "--data", &node.data()]);
        if name == "deployed" {
            assert!(
                functions.as_array().is_some_and(|f| !f.is_empty()),
                "deployed, but klf fn ls lists nothing: {functions}"
            );
        }
    }
    // The --fresh run's prompt is short enough for any machine to read before its deadline: some
    // run must have streamed tokens, or this test exercised nothing of the streaming.
    assert!(
        outcomes
            .iter()
            .any(|(_, _, _, generated, shown)| *generated > 0 && shown.is_some()),
        "no run streamed any token from the model"
    );

    // The Chef itself still works after the model's runs: the offline provider builds at once.
    let out = klf(&[
        "chef",
        "turn CSV into JSON",
        "--json",
        "--data",
        &node.data(),
    ]);
    let run: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no run JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(run["outcome"]["status"], "built", "{run}");

    for (request, name, took, generated, _) in &outcomes {
        eprintln!(
            "{name:>9} in {:>5.1} s, {generated:>4} tokens generated: {request}",
            took.as_secs_f64()
        );
    }
}

#[test]
fn the_model_servers_log_is_read_as_one_entry_per_request() {
    let log = "\
0.06.896.321 I slot launch_slot_: id  0 | task 0 | processing task, is_child = 0
0.10.408.318 I slot print_timing: id  0 | task 0 | prompt eval time =    1957.89 ms /    53 tokens (   36.94 ms per token,    27.07 tokens per second)
0.10.408.325 I slot print_timing: id  0 | task 0 |        eval time =    1554.03 ms /    26 tokens (   62.16 ms per token,    16.09 tokens per second)
0.10.408.326 I slot print_timing: id  0 | task 0 |       total time =    3511.93 ms /    79 tokens
";
    assert_eq!(
        served(log),
        vec![Served {
            prompt_tokens: 53,
            prompt_ms: 1957.89,
            generated_tokens: 26,
            generated_ms: 1554.03,
        }]
    );
    let progress = "  … interpret              12 tokens, 15.2 tokens/s, 0.8 s\n  ✗ interpret";
    assert_eq!(streamed_tokens(progress), vec![12]);
}
