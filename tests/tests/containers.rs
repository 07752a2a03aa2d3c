//! The container deployment in `deploy/`: the `klf:local` image (`deploy/build-image.sh`, built from
//! scratch, nothing pulled) and the three-node compose cluster (`deploy/docker-compose.yml`) that
//! bootstraps itself through `deploy/entrypoint.sh`. Every test brings up its own cluster under a
//! unique compose project name, drives it with `docker` as an operator would, and tears it down
//! (`down -v --remove-orphans`) even when it fails, after printing every container's log.
//!
//! They need docker and `docker compose` or `docker-compose`, so they are ignored unless asked for
//! (`cargo test -p klf-tests --test containers -- --ignored --nocapture`): a plain `cargo test`
//! reports them ignored rather than passed, and once asked for, a machine without docker fails
//! them. The tests take turns (one cluster at a time) so the measured times are not skewed by each
//! other.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program ARGS` to completion, never panicking (a failed command is a failed `Output`).
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn docker(args: &[&str]) -> Output {
    run("docker", args)
}

/// `docker ARGS`, which must succeed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The compose command of this machine: the `docker compose` plugin if it works, else
/// `docker-compose`.
fn compose_command() -> &'static [String] {
    static COMPOSE: OnceLock<Vec<String>> = OnceLock::new();
    COMPOSE.get_or_init(|| {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works("docker", &["compose", "version"]) {
            vec!["docker".into(), "compose".into()]
        } else if works("docker-compose", &["version"]) {
            vec!["docker-compose".into()]
        } else {
            panic!("the container tests need `docker compose` or `docker-compose`; neither works")
        }
    })
}

/// Builds the image once per test run with `deploy/build-image.sh` (which brings the release binary
/// up to date first); every test after the first reuses the outcome.
fn image() {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let started = Instant::now();
        let script = workspace().join("deploy/build-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("deploy/build-image.sh failed:\n{}", text(&out)));
        }
        let summary = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        eprintln!(
            "{summary}; built (release binary + image) in {:?}",
            started.elapsed()
        );
        Ok(summary)
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

/// One cluster at a time.
fn take_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running `deploy/docker-compose.yml` under a project name of its own; torn down on drop.
struct Cluster {
    project: String,
    file: PathBuf,
    /// Container id of each node, in `NODES` order (kept: `compose ps` may omit stopped ones).
    ids: Vec<String>,
}

impl Cluster {
    /// `up -d`, then waits until every node lists all three alive.
    fn up() -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000)
            .unwrap_or_default();
        let mut cluster = Self {
            project: format!(
                "klftest{}x{}x{stamp}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            file: workspace().join("deploy/docker-compose.yml"),
            ids: Vec::new(),
        };
        let started = Instant::now();
        let out = cluster.compose(&["up", "-d"]);
        assert!(
            out.status.success(),
            "compose up of {} failed: {}",
            cluster.project,
            text(&out)
        );
        for node in NODES {
            let out = cluster.compose(&["ps", "-q", node]);
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                out.status.success() && !id.is_empty(),
                "no container for {node}: {}",
                text(&out)
            );
            cluster.ids.push(id);
        }
        let formed = cluster.wait_for(Duration::from_secs(30), |c| c.all_alive());
        let Some(formed) = formed else {
            panic!("the compose mesh should form by itself: every node listing 3 alive within 30 s")
        };
        eprintln!(
            "[{}] `up -d` + bootstrap: all three alive everywhere {:?} after `up -d` returned ({:?} in all)",
            cluster.project,
            formed,
            started.elapsed()
        );
        cluster
    }

    fn compose(&self, args: &[&str]) -> Output {
        let command = compose_command();
        let file = self.file.to_string_lossy();
        let mut all = command[1..].iter().map(String::as_str).collect::<Vec<_>>();
        all.extend(["-f", &file, "-p", &self.project]);
        all.extend(args);
        run(&command[0], &all)
    }

    fn id(&self, node: &str) -> &str {
        let i = NODES
            .iter()
            .position(|n| *n == node)
            .unwrap_or_else(|| panic!("no node {node}"));
        &self.ids[i]
    }

    /// The compose network the nodes share.
    fn network(&self) -> String {
        format!("{}_mesh", self.project)
    }

    /// `klf members --json` inside `node`'s container (empty when it cannot answer).
    fn members(&self, node: &str) -> Vec<Value> {
        let out = docker(&[
            "exec",
            self.id(node),
            "klf",
            "members",
            "--data",
            "/data",
            "--json",
        ]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The state `on` sees for `of` ("absent" if not listed or `on` does not answer).
    fn state(&self, on: &str, of: &str) -> String {
        self.members(on)
            .iter()
            .find(|m| m["name"] == of)
            .and_then(|m| m["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "absent".into())
    }

    /// The node id `on` sees for `of`.
    fn node_id(&self, on: &str, of: &str) -> String {
        self.members(on)
            .iter()
            .find(|m| m["name"] == of)
            .and_then(|m| m["id"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn all_alive(&self) -> bool {
        NODES.iter().all(|n| {
            let members = self.members(n);
            members.len() == 3 && members.iter().all(|m| m["state"] == "alive")
        })
    }

    /// Polls `check` until it holds (returns how long that took) or `timeout` passes.
    fn wait_for(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if check(self) {
                return Some(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exit_code(&self, node: &str) -> String {
        docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", self.id(node)])
    }

    /// `docker logs` of `node`, stdout and stderr interleaved as written.
    fn log(&self, node: &str) -> String {
        text(&run(
            "sh",
            &["-c", "docker logs \"$1\" 2>&1", "sh", self.id(node)],
        ))
    }

    fn print_logs(&self) {
        for node in NODES.iter().take(self.ids.len()) {
            eprintln!(
                "----- docker logs {node} ({}) -----\n{}",
                self.project,
                self.log(node)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let out = self.compose(&["down", "-v", "--remove-orphans", "-t", "2"]);
        if !out.status.success() {
            eprintln!("compose down of {} failed: {}", self.project, text(&out));
        }
    }
}

/// `deploy/build-image.sh` builds the image; `up -d` alone yields a mesh: the seed creates it and
/// writes a token per peer, the peers join with them, and every node lists all three alive.
#[test]
#[ignore = "needs docker and docker compose: cargo test -p klf-tests --test containers -- --ignored"]
fn compose_mesh_bootstraps_itself() {
    let _turn = take_turn();
    image();
    let cluster = Cluster::up();

    // Everyone agrees on who is who, and nodes are reached by their names.
    for node in NODES {
        let members = cluster.members(node);
        for other in NODES {
            let member = members
                .iter()
                .find(|m| m["name"] == other)
                .unwrap_or_else(|| panic!("{node} does not list {other}"));
            assert_eq!(member["addr"], format!("{other}:7400"), "{member}");
            assert_eq!(
                member["id"].as_str().unwrap_or_default(),
                cluster.node_id("n1", other),
                "{node} and n1 disagree on {other}'s id"
            );
        }
    }
    // The seed wrote one token per peer, and the peers joined with them.
    let tokens = docker_ok(&["exec", cluster.id("n1"), "ls", "/tokens"]);
    assert_eq!(
        tokens.split_whitespace().collect::<Vec<_>>(),
        ["n2.token", "n3.token"]
    );
    for peer in ["n2", "n3"] {
        let log = cluster.log(peer);
        assert!(
            log.contains("joined mesh klf"),
            "{peer} should have joined: {log}"
        );
    }
}

/// `docker kill` (SIGKILL, no goodbye): both survivors stop showing the node alive within 10 s and
/// then show it down; `docker start` brings the same node (same id, no new join) back everywhere.
#[test]
#[ignore = "needs docker and docker compose: cargo test -p klf-tests --test containers -- --ignored"]
fn killed_container_is_seen_down_and_rejoins_after_restart() {
    let _turn = take_turn();
    image();
    let cluster = Cluster::up();
    let n3_id = cluster.node_id("n1", "n3");

    let killed = Instant::now();
    docker_ok(&["kill", cluster.id("n3")]);
    let not_alive = cluster.wait_for(Duration::from_secs(10), |c| {
        ["n1", "n2"].iter().all(|n| c.state(n, "n3") != "alive")
    });
    let Some(not_alive) = not_alive else {
        panic!("n1 and n2 should stop showing the killed n3 alive within 10 s")
    };
    eprintln!(
        "docker kill n3: n1 and n2 show it not alive {not_alive:?} after the kill was issued ({:?} since)",
        killed.elapsed()
    );
    let down = cluster.wait_for(Duration::from_secs(15), |c| {
        ["n1", "n2"].iter().all(|n| c.state(n, "n3") == "down")
    });
    assert!(down.is_some(), "the killed n3 should end up down");
    eprintln!(
        "docker kill n3: down on n1 and n2 {:?} after the kill",
        killed.elapsed()
    );

    let started = Instant::now();
    docker_ok(&["start", cluster.id("n3")]);
    let back = cluster.wait_for(Duration::from_secs(20), Cluster::all_alive);
    let Some(back) = back else {
        panic!("the restarted n3 should be alive on every node within 20 s")
    };
    eprintln!(
        "docker start n3: alive everywhere {back:?} after `docker start` returned ({:?} in all)",
        started.elapsed()
    );
    assert_eq!(
        cluster.node_id("n2", "n3"),
        n3_id,
        "n3 should keep its identity"
    );
    assert!(
        cluster
            .log("n3")
            .contains("restarting the node stored in /data"),
        "n3 should restart from its data volume, not join again"
    );
}

/// `docker network disconnect` cuts n3 off: n1 and n2 see it down and it sees both of them down,
/// while n1 and n2 keep each other alive. Reconnected (under its name again), the mesh heals by
/// itself: all three alive everywhere within 30 s.
#[test]
#[ignore = "needs docker and docker compose: cargo test -p klf-tests --test containers -- --ignored"]
fn network_partition_heals_by_itself() {
    let _turn = take_turn();
    image();
    let cluster = Cluster::up();
    let network = cluster.network();

    let cut = Instant::now();
    docker_ok(&["network", "disconnect", &network, cluster.id("n3")]);
    let split = cluster.wait_for(Duration::from_secs(15), |c| {
        ["n1", "n2"].iter().all(|n| c.state(n, "n3") == "down")
            && ["n1", "n2"].iter().all(|n| c.state("n3", n) == "down")
    });
    let Some(split) = split else {
        panic!("within 15 s of the cut, n1 and n2 should see n3 down and n3 should see both down")
    };
    eprintln!("partition: both sides see the other down {split:?} after the cut");
    assert_eq!(cluster.state("n1", "n2"), "alive", "n1 should keep n2");
    assert_eq!(cluster.state("n2", "n1"), "alive", "n2 should keep n1");
    eprintln!("partition lasted {:?}", cut.elapsed());

    let healed_at = Instant::now();
    // With its alias, so `n3` resolves again for the others (compose gave it the service name).
    docker_ok(&[
        "network",
        "connect",
        "--alias",
        "n3",
        &network,
        cluster.id("n3"),
    ]);
    let healed = cluster.wait_for(Duration::from_secs(30), Cluster::all_alive);
    let Some(healed) = healed else {
        panic!("after reconnecting n3, all three should be alive everywhere within 30 s")
    };
    eprintln!(
        "partition healed: all alive everywhere {healed:?} after `network connect` returned ({:?} in all)",
        healed_at.elapsed()
    );
}

/// `docker stop` sends SIGTERM: the node leaves the mesh (peers show `left`) and exits 0. The
/// seed's entrypoint forwards the signal to its `klf`, so the same holds for the seed. Started
/// again, both come back from their data volumes.
#[test]
#[ignore = "needs docker and docker compose: cargo test -p klf-tests --test containers -- --ignored"]
fn sigterm_leaves_gracefully() {
    let _turn = take_turn();
    image();
    let cluster = Cluster::up();

    let steps: [(&str, &[&str]); 2] = [("n2", &["n1", "n3"]), ("n1", &["n3"])];
    for (node, watchers) in steps {
        let stopping = Instant::now();
        docker_ok(&["stop", "-t", "10", cluster.id(node)]);
        let stopped = stopping.elapsed();
        assert_eq!(
            cluster.exit_code(node),
            "0",
            "{node} should exit 0 on SIGTERM"
        );
        let left = cluster.wait_for(Duration::from_secs(3), |c| {
            watchers.iter().all(|w| c.state(w, node) == "left")
        });
        let Some(left) = left else {
            panic!("{watchers:?} should show {node} `left` right after `docker stop`")
        };
        eprintln!(
            "docker stop {node}: exited 0 in {stopped:?}; `left` on {watchers:?} {left:?} after that"
        );
    }

    let starting = Instant::now();
    docker_ok(&["start", cluster.id("n1"), cluster.id("n2")]);
    let back = cluster.wait_for(Duration::from_secs(20), Cluster::all_alive);
    let Some(back) = back else {
        panic!("the stopped n1 and n2 should be alive everywhere again within 20 s")
    };
    eprintln!(
        "docker start n1 n2: all alive everywhere {back:?} after `docker start` returned ({:?} in all)",
        starting.elapsed()
    );
    // The seed did not write tokens again: the peers' files were still there.
    let seed_log = cluster.log("n1");
    assert_eq!(
        seed_log.matches("wrote a join token").count(),
        2,
        "{seed_log}"
    );
}

/// A function deployed in the compose mesh (one replica) is called from another container; when
/// the container hosting it is killed, calls from a survivor succeed again once placement moves the
/// function (the survivor already holds the artifact: every node replicates every artifact).
#[test]
#[ignore = "needs docker and docker compose: cargo test -p klf-tests --test containers -- --ignored"]
fn calls_survive_the_loss_of_the_hosting_container() {
    let _turn = take_turn();
    image();
    let cluster = Cluster::up();
    let package = workspace().join("examples/hello");
    let target = format!("{}:/tmp/hello", cluster.id("n1"));
    docker_ok(&["cp", &package.to_string_lossy(), &target]);
    docker_ok(&[
        "exec",
        cluster.id("n1"),
        "klf",
        "fn",
        "deploy",
        "/tmp/hello",
        "--replicas",
        "1",
        "--data",
        "/data",
    ]);
    // Where rendezvous hashing puts it, from the ids the mesh reports.
    let ids: Vec<String> = NODES.iter().map(|n| cluster.node_id("n1", n)).collect();
    let host_id = klf_actors::placement::hosts("hello", ids.iter().map(String::as_str), 1)
        .first()
        .map(|h| h.to_string())
        .expect("a host");
    let host = NODES[ids
        .iter()
        .position(|id| *id == host_id)
        .expect("host is a node")];
    let survivor = NODES
        .iter()
        .copied()
        .find(|n| *n != host)
        .expect("a survivor");
    let invoke = |c: &Cluster| {
        let out = docker(&[
            "exec",
            c.id(survivor),
            "klf",
            "fn",
            "invoke",
            "hello",
            "--input",
            r#"{"name":"containers"}"#,
            "--data",
            "/data",
        ]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).ok()
                == Some(serde_json::json!({"message": "Hello, containers!"}))
    };
    assert!(
        cluster.wait_for(Duration::from_secs(15), invoke).is_some(),
        "{survivor} should call hello (hosted on {host}) within 15 s of the deploy"
    );

    let killed = Instant::now();
    docker_ok(&["kill", cluster.id(host)]);
    let recovered = cluster.wait_for(Duration::from_secs(40), invoke);
    let Some(recovered) = recovered else {
        cluster.print_logs();
        panic!(
            "{survivor} should call hello again once {host} is gone and the function is re-placed"
        )
    };
    eprintln!(
        "hello (hosted on {host}) answers {survivor} again {recovered:?} after {host} was killed ({:?} in all)",
        killed.elapsed()
    );
}
