//! Meshes of real `klf` processes on loopback, driven through the CLI as a user would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The `klf` binary of this build, brought up to date on first use (a no-op when it is, so a stale
/// binary is never tested). `KLF_BIN` overrides it.
pub fn klf_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("KLF_BIN") {
            return PathBuf::from(bin);
        }
        // Test executables live in target/<profile>/deps/; the binary in target/<profile>/.
        let exe = std::env::current_exe().unwrap_or_default();
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let bin = profile_dir.join("klf");
        {
            let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            build.args(["build", "-p", "klf-node"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "could not build the klf binary; run `cargo build -p klf-node` first"
            );
        }
        bin
    })
}

/// A free UDP port on loopback.
pub fn free_udp_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    socket.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
}

/// A free TCP port on loopback.
pub fn free_tcp_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    socket.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
}

/// Runs `klf ARGS` to completion.
pub fn klf(args: &[&str]) -> Output {
    Command::new(klf_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run klf: {e}"))
}

/// Runs `klf ARGS`: whether it succeeded, its stdout and its stderr.
pub fn klf_run(args: &[&str]) -> (bool, String, String) {
    let out = klf(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `klf ARGS`, which must succeed and print JSON, and parses it.
pub fn klf_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = klf_run(args);
    assert!(ok, "klf {args:?} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("klf {args:?} printed no JSON ({e}): {stdout}"))
}

/// One `klf up` process and where it listens.
pub struct NodeProcess {
    pub name: String,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    /// More `klf up` flags, on every start.
    extra_args: Vec<String>,
}

impl NodeProcess {
    fn spawn(&mut self, join: Option<&str>) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(klf_bin());
        cmd.arg("up")
            .arg("--data")
            .arg(&self.data)
            .args(["--name", &self.name])
            .args(["--listen", &self.listen.to_string()])
            .args(["--api", &self.api.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(token) = join {
            cmd.args(["--join", token]);
        }
        cmd.args(&self.extra_args);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// Whether the API answers `/healthz`.
    pub fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&self.api, Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let request = format!("GET /healthz HTTP/1.0\r\nHost: {}\r\n\r\n", self.api);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }

    /// Waits for the API to come up; fails with the node's log if it does not, or the process exits.
    pub fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} not healthy after {timeout:?}:\n{}",
            self.name,
            self.log_text()
        )
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `klf members --json` as this node sees it.
    pub fn members(&self) -> Vec<Value> {
        let out = klf(&["members", "--json", "--data", &self.data.to_string_lossy()]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The state this node sees for `name` ("absent" if not listed).
    pub fn state_of(&self, name: &str) -> String {
        self.members()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "absent".into())
    }

    /// How many members this node sees in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.members()
            .iter()
            .filter(|m| m["state"] == state)
            .count()
    }

    /// A join token from this node (`klf token create`, last line of stdout).
    pub fn token(&self, ttl: &str) -> anyhow::Result<String> {
        let out = klf(&[
            "token",
            "create",
            "--ttl",
            ttl,
            "--data",
            &self.data.to_string_lossy(),
        ]);
        if !out.status.success() {
            bail!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout)?
            .lines()
            .last()
            .map(str::to_string)
            .context("token create printed nothing")
    }

    /// SIGKILL: the process dies without telling anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("{} did not exit within {timeout:?} of SIGTERM", self.name)
    }

    /// Starts the node again from its data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn(None)?;
        self.wait_healthy(Duration::from_secs(20))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A mesh of `klf` processes in a temporary directory.
pub struct ProcessMesh {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProcess>,
}

impl ProcessMesh {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            nodes: Vec::new(),
        })
    }

    fn new_node(&self, name: &str) -> NodeProcess {
        NodeProcess {
            name: name.to_string(),
            data: self.dir.path().join(name),
            listen: free_udp_addr(),
            api: free_tcp_addr(),
            child: None,
            log: self.dir.path().join(format!("{name}.log")),
            extra_args: Vec::new(),
        }
    }

    /// `klf init` + `klf up` of the first node.
    pub fn init(&mut self, name: &str) -> anyhow::Result<usize> {
        self.init_with(name, &[])
    }

    /// `klf init` + `klf up EXTRA…` of the first node (the extra flags stay on restarts).
    pub fn init_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let mut node = self.new_node(name);
        node.extra_args = extra.iter().map(|a| a.to_string()).collect();
        let out = klf(&[
            "init",
            "--data",
            &node.data.to_string_lossy(),
            "--name",
            name,
        ]);
        if !out.status.success() {
            bail!("klf init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        node.spawn(None)?;
        node.wait_healthy(Duration::from_secs(20))?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// `klf up --join TOKEN` of a new node.
    pub fn join(&mut self, name: &str, token: &str) -> anyhow::Result<usize> {
        let mut node = self.new_node(name);
        node.spawn(Some(token))?;
        node.wait_healthy(Duration::from_secs(20))?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Runs `klf up --join TOKEN` for a node that should be refused; returns its exit status and output.
    pub fn refused_join(&self, name: &str, token: &str) -> (std::process::ExitStatus, String) {
        let node = self.new_node(name);
        let out = Command::new(klf_bin())
            .arg("up")
            .arg("--data")
            .arg(&node.data)
            .args(["--name", name])
            .args(["--listen", &node.listen.to_string()])
            .args(["--api", &node.api.to_string()])
            .args(["--join", token])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run klf: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    }

    /// Waits until `check` holds, polling every 100 ms.
    pub fn wait(&self, timeout: Duration, mut check: impl FnMut(&Self) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if check(self) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_text()))
            .collect()
    }
}
