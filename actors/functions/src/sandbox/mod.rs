//! The sandbox of one function instance: a QuickJS runtime (rquickjs) running one function's
//! JavaScript module, with no ambient authority.
//!
//! Every instance owns its own runtime, with a memory limit and an execution
//! deadline, and reaches the outside world only through the host capabilities its manifest
//! grants. This module is that runtime and nothing more: it knows no registry, router or network.
//! The node drives it through [`Instance`] (or the [`InstanceActor`] around it) and answers its
//! requests through the [`Host`] trait.
//!
//! How the rules are enforced, and why this way:
//!
//! - **No ambient I/O.** The function's context is built from an explicit list of intrinsics (no
//!   `std`/`os` modules, no timers, no `performance`). The only importable module is the embedded
//!   `klf:base` (`base.js`); any other import, static or dynamic, is refused by the resolver, and
//!   a static one fails `start` with [`SandboxError::BadModule`] naming it. Capabilities are
//!   native functions checked in Rust, so nothing the JavaScript does can widen them.
//! - **No `eval`/`Function`.** The context lacks QuickJS's `Eval` intrinsic, so `eval`,
//!   `Function(...)`, `(function(){}).constructor(...)` and the async/generator siblings all throw
//!   "eval is not supported". Such a context cannot compile source either: modules are compiled
//!   to bytecode in a throwaway full context (`klf:base` once per process) and only bytecode is
//!   loaded. An allow-list of what the engine can do, not a block-list of globals to delete.
//! - **Memory.** The runtime allocates through a metered allocator (`allocator.rs`) that refuses
//!   allocations over the limit and counts refusals. JavaScript can catch QuickJS's out-of-memory
//!   error, so the verdict comes from that count, not from what the function returned. An engine
//!   that ran out of memory is replaced before the next call (its JavaScript state may have been
//!   cut half-way through an update); `onInitialize` runs again on the fresh one.
//! - **Time.** The interrupt handler stops JavaScript that keeps the CPU once no call on the
//!   instance has time left (`calls.rs`); awaited host calls and the call's own promise are
//!   bounded by `tokio` timers, because the interrupt handler never runs while JavaScript waits.
//!   After a timeout the same engine keeps serving: QuickJS unwinds an interrupt cleanly.
//! - **Concurrency.** Calls on one instance overlap: JavaScript runs one slice at a time (the
//!   runtime's lock), but a call awaiting a host call does not hold up the others.
//!
//! The JavaScript side (`base.js`): the default export extends `BaseFunction`; the host runs
//! `initialize()` once, then per call `onExecute(input, ctx)`, `execute(input, ctx)`, and on a
//! throw `onError(error, ctx)` before the error goes to the caller. `this.ctx` (and the per-call
//! `ctx` argument, which carries that call's exact deadline and trace) offers `call(name, input)`
//! → Promise, `kv.get/put/delete/list` → Promises, `log(...)` / `log.debug/info/warn/error(...)`
//! (synchronous), `config` and `now()`. A refused or failed host request throws a catchable
//! `HostError` whose `name` is the error kind (`CapabilityDenied`, `HostError`, `Timeout`); if it
//! propagates out of the function unchanged, the caller gets the typed [`SandboxError`].

mod actor;
mod allocator;
mod calls;
mod compile;
mod crypto;
mod engine;
mod instance;
mod memory_kv;
mod natives;

#[cfg(test)]
mod capability_tests;
#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod library_tests;
#[cfg(any(test, feature = "test-host"))]
pub mod test_host;
#[cfg(test)]
mod tests;

/// A compact reference of `klf:base` (classes, methods, options, helpers), generated at build time
/// from the library's doc comments (see `build.rs`): what the Chef's code generator is told.
pub const BASE_REFERENCE: &str = include_str!(concat!(env!("OUT_DIR"), "/base_reference.md"));

use futures_util::future::BoxFuture;
use std::time::{Duration, Instant};

pub use actor::{InstanceActor, InstanceMsg};
pub use instance::Instance;
pub use memory_kv::MemoryKv;

/// Checks that a function's module compiles (syntax, imports) without running any of it, within
/// `limits.memory_bytes`: what a deploy verifies before anything is published.
pub async fn check(code: &FunctionCode, limits: SandboxLimits) -> Result<(), SandboxError> {
    compile::check_module(&code.entry, &code.source, limits.memory_bytes).await
}

/// Resource limits of one instance (the manifest's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Bytes the instance's JavaScript heap may hold, counting allocator overhead.
    pub memory_bytes: usize,
    /// Longest a single call (and `start`, `validate`, `test`) may take; a caller's earlier
    /// deadline wins.
    pub timeout: Duration,
    /// Largest JSON text a call may return.
    pub max_output_bytes: usize,
}

impl Default for SandboxLimits {
    /// The manifest defaults: 32 MiB, one second, 1 MiB of output.
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            timeout: Duration::from_secs(1),
            max_output_bytes: 1 << 20,
        }
    }
}

/// The code of one function, as the node hands it to the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCode {
    pub name: String,
    pub version: String,
    /// The manifest's `type`; JavaScript sees it as `this.type`.
    pub kind: String,
    /// The entry file's name: the module's name in error locations and stack traces.
    pub entry: String,
    /// The JavaScript source: an ES module whose default export is a class extending
    /// `BaseFunction` from `klf:base`.
    pub source: String,
    /// `this.config` and `ctx.config`.
    pub config: serde_json::Value,
    /// Names of the functions this one may `ctx.call` (the router enforces version ranges).
    pub dependencies: Vec<String>,
    /// Granted host capabilities: `call`, `kv`, `log`, `crypto`, `secret`, `model`,
    /// `schedule`, `http`. `now` and `config` are always available.
    pub capabilities: Vec<String>,
    /// Names of the node secrets `ctx.secret` may read (the manifest's `secrets`).
    pub secrets: Vec<String>,
    /// The manifest's `[http]`: where `ctx.http.fetch` may go (with the `http` capability).
    pub http: crate::http::HttpGrant,
}

impl FunctionCode {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Severity of a message a function logs through `ctx.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn parse(level: &str) -> Self {
        match level {
            "debug" => Self::Debug,
            "warn" => Self::Warn,
            "error" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// What travels with a call: given to [`Instance::execute`] and passed on, unchanged, to
/// [`Host::call`] for the calls that execution makes (the host adds one to the depth when it
/// dispatches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMeta {
    /// When the caller stops waiting. The sandbox also applies [`SandboxLimits::timeout`].
    pub deadline: Instant,
    /// How many calls deep this one is.
    pub call_depth: u16,
    /// W3C `traceparent` of the caller's span.
    pub trace_parent: Option<String>,
}

impl CallMeta {
    /// A top-level call with `timeout` to run.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            call_depth: 0,
            trace_parent: None,
        }
    }
}

/// A deferred or periodic call a function asks for with `ctx.schedule`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRequest {
    /// `NAME` or `NAME@RANGE`: a declared dependency, or the function itself.
    pub target: String,
    pub input: serde_json::Value,
    /// Before the first run.
    pub delay: Duration,
    /// Between runs, for a periodic schedule.
    pub every: Option<Duration>,
}

/// One live schedule, as `ctx.schedule.list()` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScheduleInfo {
    pub id: String,
    pub target: String,
    /// `after` or `every`.
    pub kind: &'static str,
    #[serde(rename = "intervalMs")]
    pub interval_ms: Option<u64>,
    /// Unix milliseconds of the next run.
    #[serde(rename = "nextAt")]
    pub next_at: u64,
    pub runs: u64,
}

/// What an instance may ask of its host: implemented by the node, one per instance (the host knows
/// which function it serves, so `kv` is that function's own namespace).
///
/// The sandbox checks capabilities and declared dependencies before it calls any of these.
pub trait Host: Send + Sync + 'static {
    /// Calls another function (`target` is `NAME` or `NAME@RANGE`, NAME a declared dependency).
    /// `meta` is the calling execution's; the sandbox bounds the future by `meta.deadline`.
    fn call(
        &self,
        target: String,
        input: serde_json::Value,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<serde_json::Value, SandboxError>>;
    fn kv_get(&self, key: &str) -> Result<Option<serde_json::Value>, SandboxError>;
    fn kv_put(&self, key: &str, value: serde_json::Value) -> Result<(), SandboxError>;
    fn kv_delete(&self, key: &str) -> Result<(), SandboxError>;
    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, SandboxError>;
    fn log(&self, level: LogLevel, message: &str);

    /// The node secret `name` (already checked against the manifest's `secrets`).
    fn secret(&self, name: &str) -> Result<String, SandboxError> {
        Err(SandboxError::Secret(format!(
            "secret {name:?}: this host keeps no secrets"
        )))
    }

    /// Asks the node's model provider; bounded by `meta.deadline`.
    fn model(
        &self,
        request: klf_model::ModelRequest,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<klf_model::ModelReply, SandboxError>> {
        let _ = (request, meta);
        Box::pin(async {
            Err(SandboxError::ModelUnavailable(
                "this host has no model provider".into(),
            ))
        })
    }

    /// Sends an HTTP request for `ctx.http.fetch` (the grant and the first URL already checked;
    /// the host checks every hop and address again); bounded by `meta.deadline`.
    fn http(
        &self,
        request: crate::http::HttpRequest,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<crate::http::HttpResponse, SandboxError>> {
        let _ = (request, meta);
        Box::pin(async {
            Err(SandboxError::Http(
                "this host cannot reach the network".into(),
            ))
        })
    }

    /// Starts a schedule (target already checked against the manifest); returns its id.
    fn schedule(&self, request: ScheduleRequest) -> Result<String, SandboxError> {
        let _ = request;
        Err(SandboxError::Schedule(
            "this host cannot schedule calls".into(),
        ))
    }

    /// Stops schedule `id`; false if there was none.
    fn unschedule(&self, id: &str) -> bool {
        let _ = id;
        false
    }

    /// The function's live schedules on this node.
    fn schedules(&self) -> Vec<ScheduleInfo> {
        Vec::new()
    }
}

/// Why a sandbox operation failed. Messages say what happened and, where it helps, what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SandboxError {
    /// The module does not parse.
    #[error("syntax error{}: {message}", location(.line, .column))]
    Syntax {
        message: String,
        line: Option<u32>,
        column: Option<u32>,
    },
    /// The function threw (after its `onError` ran).
    #[error("the function threw: {message}")]
    User {
        message: String,
        stack: Option<String>,
    },
    /// The deadline passed, whether the function was computing or waiting for the host.
    #[error("the call did not finish within {after:?}")]
    Timeout { after: Duration },
    /// The instance's heap reached its limit during the call (even if the function caught it).
    #[error("the function exceeded its memory limit of {limit_bytes} bytes")]
    OutOfMemory { limit_bytes: usize },
    /// The function used a capability it was not granted, or called an undeclared dependency.
    #[error("capability '{capability}' denied: {detail}")]
    CapabilityDenied { capability: String, detail: String },
    /// The module cannot be a function: no default export, not a `BaseFunction` class, or a
    /// forbidden import.
    #[error("bad module: {0}")]
    BadModule(String),
    /// The result is not JSON (undefined, a function, a cycle, a BigInt) or is too large.
    #[error("bad output: {0}")]
    BadOutput(String),
    /// The host failed a request (for example, the called function failed); its message is kept.
    #[error("host error: {0}")]
    Host(String),
    /// A `ctx.crypto` request failed (unknown algorithm, bad key, failed decryption).
    #[error("crypto: {0}")]
    Crypto(String),
    /// `ctx.secret` could not give the secret (not set on this node, unreadable).
    #[error("secret: {0}")]
    Secret(String),
    /// The node has no model provider for `ctx.model`.
    #[error("model unavailable: {0}")]
    ModelUnavailable(String),
    /// The model provider failed the request.
    #[error("model: {0}")]
    Model(String),
    /// `ctx.schedule` refused the request (bad interval, too many schedules).
    #[error("schedule: {0}")]
    Schedule(String),
    /// A `ctx.http.fetch` request failed: bad arguments, a limit, no answer.
    #[error("http: {0}")]
    Http(String),
    /// The sandbox itself failed (the engine could not be created, a task panicked). Not the
    /// function's fault; worth a bug report.
    #[error("sandbox failure: {0}")]
    Internal(String),
    /// The host failed a request because of an error of its own (the store, a parser): `what`
    /// says which request, the source says why. JavaScript sees it as a `HostError`.
    #[error("host error: {what}: {cause}")]
    HostFailure {
        what: String,
        #[source]
        cause: Cause,
    },
    /// The model provider failed the request; its error is the source.
    #[error("model: {0}")]
    ModelFailure(#[source] Cause),
    /// The result could not be read out of the engine (`what`); the engine's error is the source.
    #[error("bad output: {what}: {cause}")]
    OutputFailure {
        what: String,
        #[source]
        cause: Cause,
    },
    /// The sandbox itself failed at `what` because of an engine or runtime error, kept as the
    /// source. Not the function's fault; worth a bug report.
    #[error("sandbox failure: {what}: {cause}")]
    InternalFailure {
        what: String,
        #[source]
        cause: Cause,
    },
}

impl SandboxError {
    /// A host request (`what`) that failed because of `cause`.
    pub fn host_failure(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::HostFailure {
            what: what.into(),
            cause: Cause::new(cause),
        }
    }

    /// A failure of the sandbox itself at `what`, because of `cause`.
    pub fn internal_failure(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::InternalFailure {
            what: what.into(),
            cause: Cause::new(cause),
        }
    }
}

/// The error behind a [`SandboxError`]. Shared, because a sandbox error is cloned (a host error
/// is kept by id until the function rethrows it); compared by message, because sandbox errors
/// are compared as values (two causes that say the same are the same to a caller).
#[derive(Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(error))
    }

    /// The underlying error, for downcasting.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// A cause stands for the error it holds: it shows that error, and the chain goes on with that
/// error's own source.
impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

impl SandboxError {
    /// The variant's name, as JavaScript sees it in `error.name` when a host request fails.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Syntax { .. } => "SyntaxError",
            Self::User { .. } => "Error",
            Self::Timeout { .. } => "Timeout",
            Self::OutOfMemory { .. } => "OutOfMemory",
            Self::CapabilityDenied { .. } => "CapabilityDenied",
            Self::BadModule(_) => "BadModule",
            Self::BadOutput(_) => "BadOutput",
            Self::Host(_) => "HostError",
            Self::Crypto(_) => "CryptoError",
            Self::Secret(_) => "SecretError",
            Self::ModelUnavailable(_) => "ModelUnavailable",
            Self::Model(_) => "ModelError",
            Self::Schedule(_) => "ScheduleError",
            Self::Http(_) => "HttpError",
            Self::Internal(_) | Self::InternalFailure { .. } => "InternalError",
            Self::HostFailure { .. } => "HostError",
            Self::ModelFailure(_) => "ModelError",
            Self::OutputFailure { .. } => "BadOutput",
        }
    }
}

fn location(line: &Option<u32>, column: &Option<u32>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" at line {line}, column {column}"),
        (Some(line), None) => format!(" at line {line}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn failures_with_a_cause_look_like_their_kind_to_javascript_and_keep_the_cause() {
        let io = || std::io::Error::other("disk full");
        let host = SandboxError::host_failure("kv", io());
        assert_eq!(host.kind(), "HostError");
        assert_eq!(host.to_string(), "host error: kv: disk full");
        assert_eq!(
            host.source().map(ToString::to_string).as_deref(),
            Some("disk full")
        );
        let internal = SandboxError::internal_failure("starting", io());
        assert_eq!(internal.kind(), "InternalError");
        assert_eq!(
            SandboxError::ModelFailure(Cause::new(io())).kind(),
            "ModelError"
        );
        // Clones share the cause; equal messages are equal causes.
        assert_eq!(host.clone(), host);
        assert_eq!(host, SandboxError::host_failure("kv", io()));
        assert_ne!(
            host,
            SandboxError::host_failure("kv", std::io::Error::other("other"))
        );
        let Some(SandboxError::HostFailure { cause, .. }) = Some(&host) else {
            unreachable!()
        };
        assert!(cause.get().downcast_ref::<std::io::Error>().is_some());
    }
}
