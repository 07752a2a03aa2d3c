//! The router: turns `NAME@RANGE` and an input into a result, wherever the function runs.
//!
//! - Resolution: the deployment serves the version a rollback pinned, else the highest live
//!   version; a range that excludes it is an error that says which version is served.
//! - Target: a local instance first (this node is among the function's placed hosts); otherwise the
//!   less busy of two random hosts (power of two choices) over KLF.
//! - Deadlines propagate (an absolute deadline travels in `Invoke`); a call that provably never
//!   started (host unreachable, not hosting, overloaded) is retried on another host, any other
//!   failure only for functions declared idempotent.
//! - Per-function concurrency limit: beyond it, `Overloaded` at once. Call depth is limited, so a
//!   function that calls itself forever gets an error, not a meltdown.
//!
//! The router is a cloneable handle rather than an actor: it holds no state that needs a mailbox
//! (in-flight counters are atomic-ish under a short lock), and a mailbox hop on every call would
//! sit on the hottest path of the mesh.

pub mod choice;
pub mod error;
pub mod host;
pub mod instances;
pub mod placed;
pub mod placement;
pub mod placer;
pub mod stats;
pub mod test_run;
pub mod trace;
pub mod trace_ring;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use klf_proto::{Frame, Invoke, InvokeFailure, InvokeReply, TraceContext};
use ractor::ActorRef;
use tokio::sync::watch;
use tracing::{Span, debug};

pub use error::{InvokeError, InvokeErrorKind};
pub use host::HostServices;
pub use stats::{FunctionStats, StatsBook};

use crate::instances::{Hosted, Instances};
use klf_functions::sandbox::CallMeta;
use klf_mesh::{MemberId, PeerAddr, TransportError, TransportHandle, TransportMsg};
use klf_registry::{Catalog, RegistryMsg, Release};
use klf_store::Store;

/// Deepest chain of calls (a function calling a function …) before `CallDepthExceeded`.
pub const MAX_CALL_DEPTH: u16 = 16;
/// Largest input of one call, as JSON text.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// One call to route.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub function: String,
    pub range: semver::VersionReq,
    pub input: serde_json::Value,
    pub deadline: Instant,
    pub call_depth: u16,
    pub idempotency_key: Option<String>,
    /// The principal on whose behalf the call runs.
    pub caller: String,
    /// W3C `traceparent` of the caller's span.
    pub trace_parent: Option<String>,
}

impl InvokeRequest {
    /// A top-level call of `function` (any version) with `timeout` to run.
    pub fn new(function: &str, input: serde_json::Value, timeout: Duration) -> Self {
        Self {
            function: function.to_string(),
            range: semver::VersionReq::STAR,
            input,
            deadline: Instant::now() + timeout,
            call_depth: 0,
            idempotency_key: None,
            caller: "admin".into(),
            trace_parent: None,
        }
    }
}

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeOutcome {
    pub output: serde_json::Value,
    /// `name@version` that served it.
    pub served_by: String,
    /// Node id of the node that ran it.
    pub node: String,
}

/// The router handle.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

pub(crate) struct RouterInner {
    me: String,
    catalog: watch::Receiver<Arc<Catalog>>,
    alive: watch::Receiver<Arc<Vec<MemberId>>>,
    instances: Instances,
    registry: ActorRef<RegistryMsg>,
    transport: ActorRef<TransportMsg>,
    /// The transport's direct path for live connections.
    link: TransportHandle,
    in_flight: Mutex<HashMap<String, usize>>,
    /// What the calls served here did, per function@version.
    stats: StatsBook,
    /// Each function's hosts under the current alive view.
    placed: placed::PlacedHosts,
}

fn unix_ms(at: Instant) -> u64 {
    klf_proto::unix_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64
}

/// Where a call may go (see `RouterInner::resolve`).
struct Resolved {
    /// The release the deployment serves and its hosts (without a canary host).
    stable: Option<(Arc<Release>, Arc<[MemberId]>)>,
    /// The node that serves the canary, and the canary's release.
    canary: Option<(MemberId, Arc<Release>)>,
}

impl Resolved {
    fn is_empty(&self) -> bool {
        self.canary.is_none()
            && self
                .stable
                .as_ref()
                .is_none_or(|(_, hosts)| hosts.is_empty())
    }

    /// The release `node` serves, if it is a host.
    fn release_for(&self, node: &str) -> Option<&Arc<Release>> {
        match (&self.canary, &self.stable) {
            (Some((host, release)), _) if host.node_id == node => Some(release),
            (_, Some((release, hosts))) if hosts.iter().any(|h| h.node_id == node) => Some(release),
            _ => None,
        }
    }

    /// Every host with the release it serves (the canary host last).
    fn hosts(&self) -> Vec<(&MemberId, &Arc<Release>)> {
        let mut all: Vec<(&MemberId, &Arc<Release>)> = match &self.stable {
            Some((release, hosts)) => hosts.iter().map(|h| (h, release)).collect(),
            None => Vec::new(),
        };
        if let Some((host, release)) = &self.canary {
            all.push((host, release));
        }
        all
    }
}

/// Longest a host waits for a catalog record a caller already has (see `resolve_arriving`).
const CATALOG_LAG: Duration = Duration::from_secs(2);
/// Longest a peer's deadline may reach into the future (the longest manifest timeout).
const MAX_REMOTE_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// The local instant of a peer's absolute deadline, capped: a peer cannot make a call wait longer
/// than any function may run (and a huge value cannot overflow the clock).
fn instant_of(unix_deadline_ms: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let wait = Duration::from_millis(unix_deadline_ms.saturating_sub(now)).min(MAX_REMOTE_DEADLINE);
    Instant::now() + wait
}

/// The `traceparent` to pass on from the current span (see [`trace::onward`]); free when no
/// exporter is installed.
fn onward_trace(inherited: Option<String>) -> Option<String> {
    let span = Span::current();
    if span.is_disabled() {
        return inherited;
    }
    trace::onward(&span, inherited.as_deref())
}

/// Bytes `value` takes as JSON text, counted without writing it out.
fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn check_input_size(len: usize) -> Result<(), InvokeError> {
    if len > MAX_INPUT_BYTES {
        return Err(InvokeError::new(
            InvokeErrorKind::InputTooLarge,
            format!("input of {len} bytes exceeds the limit of {MAX_INPUT_BYTES}"),
        ));
    }
    Ok(())
}

/// Counts a call in flight to a host for as long as it lives.
struct InFlight<'a> {
    router: &'a RouterInner,
    host: String,
}

impl<'a> InFlight<'a> {
    fn new(router: &'a RouterInner, host: &str) -> Self {
        if let Ok(mut map) = router.in_flight.lock() {
            *map.entry(host.to_string()).or_default() += 1;
        }
        Self {
            router,
            host: host.to_string(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.router.in_flight.lock()
            && let Some(n) = map.get_mut(&self.host)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// What a router is built from.
pub struct RouterArgs {
    /// This node's id.
    pub me: String,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// Alive members, kept current by the [`placer::Placer`].
    pub alive: watch::Receiver<Arc<Vec<MemberId>>>,
    pub registry: ActorRef<RegistryMsg>,
    pub transport: ActorRef<TransportMsg>,
    /// The transport's direct path for live connections.
    pub link: TransportHandle,
    pub store: Arc<Store>,
    /// What every function's host offers beyond calls and kv.
    pub services: host::HostServices,
}

impl Router {
    /// A router for node `args.me`.
    pub fn new(args: RouterArgs) -> Self {
        let RouterArgs {
            me,
            catalog,
            alive,
            registry,
            transport,
            link,
            store,
            services,
        } = args;
        let store = Arc::downgrade(&store);
        let inner = Arc::new_cyclic(|weak: &Weak<RouterInner>| {
            let weak = weak.clone();
            RouterInner {
                me,
                catalog,
                alive,
                instances: Instances::new(Arc::new(move |release: &Release| {
                    Arc::new(host::NodeHost::new(
                        weak.clone(),
                        release,
                        store.clone(),
                        services.clone(),
                    ))
                })),
                registry,
                transport,
                link,
                in_flight: Mutex::new(HashMap::new()),
                stats: StatsBook::new(),
                placed: placed::PlacedHosts::default(),
            }
        });
        Self { inner }
    }

    pub(crate) fn from_inner(inner: Arc<RouterInner>) -> Self {
        Self { inner }
    }

    /// The instances running on this node.
    pub fn instances(&self) -> &Instances {
        &self.inner.instances
    }

    /// Statistics of the calls this node served.
    pub fn stats(&self) -> &StatsBook {
        &self.inner.stats
    }

    /// Routes one call to wherever the function runs and returns its result.
    pub async fn invoke(&self, request: InvokeRequest) -> Result<InvokeOutcome, InvokeError> {
        let span = tracing::info_span!(
            target: trace::TARGET,
            "klf.invoke",
            otel.kind = "client",
            klf.node = %self.inner.me,
            function = %request.function,
            call_depth = request.call_depth,
            node = tracing::field::Empty,
            error.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let parent = request.trace_parent.clone();
        let result = trace::traced(&span, parent.as_deref(), self.inner.invoke(request)).await;
        if let Ok(outcome) = &result {
            span.record("node", outcome.node.as_str());
        }
        result
    }

    /// Serves an `Invoke` from a peer: only on an instance of this node.
    pub async fn serve_remote(&self, invoke: Invoke) -> InvokeReply {
        let span = tracing::info_span!(
            target: trace::TARGET,
            "klf.serve",
            otel.kind = "server",
            klf.node = %self.inner.me,
            function = %invoke.function,
            call_depth = invoke.call_depth,
            error.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let parent = invoke.trace.traceparent.clone();
        let served = trace::traced(&span, Some(&parent), self.inner.serve_remote(invoke)).await;
        match served {
            Ok((output, served_by)) => InvokeReply {
                outcome: Ok(output.to_string().into_bytes()),
                served_by_version: served_by,
            },
            Err(e) => InvokeReply {
                outcome: Err(InvokeFailure {
                    kind: e.kind.as_str().to_string(),
                    message: e.message,
                }),
                served_by_version: String::new(),
            },
        }
    }

    /// Ensures this node's instances match placement (started by the placer).
    pub(crate) async fn ensure_running(
        &self,
        release: &Release,
    ) -> Result<Arc<Hosted>, InvokeError> {
        self.inner.ensure_running(release).await
    }
}

impl RouterInner {
    /// Where a call of `name@range` may go: the stable hosts with the release the deployment
    /// serves, and, while a canary runs, the one node that serves the canary's release instead.
    /// Either part is left out when `range` excludes its version.
    fn resolve(&self, name: &str, range: &semver::VersionReq) -> Result<Resolved, InvokeError> {
        let catalog = self.catalog.borrow().clone();
        // The pinned version after a rollback (or during a canary), else the highest.
        let Some(served) = catalog.served(name) else {
            return Err(InvokeError::new(
                InvokeErrorKind::UnknownFunction,
                format!("no function named {name}"),
            ));
        };
        let deployment = catalog
            .deployment(name)
            .filter(|d| d.enabled)
            .ok_or_else(|| {
                InvokeError::new(
                    InvokeErrorKind::NotDeployed,
                    format!("{name} is published but not deployed"),
                )
            })?;
        let alive = self.alive.borrow().clone();
        let canary = catalog
            .canary(name)
            .map(|(_, release)| release)
            .filter(|release| range.matches(&release.manifest.version))
            .and_then(|release| {
                let host = placement::canary_host(
                    name,
                    alive.iter().map(|m| m.node_id.as_str()),
                    deployment.replicas as usize,
                )?;
                let host = alive.iter().find(|m| m.node_id == host)?.clone();
                Some((host, release.clone()))
            });
        let stable = if range.matches(&served.manifest.version) {
            let mut hosts = self.placed.hosts(&alive, name, deployment.replicas);
            // A small mesh's canary host serves the canary instead of the stable version.
            if let Some((host, _)) = &canary
                && hosts.iter().any(|h| h.node_id == host.node_id)
            {
                hosts = hosts
                    .iter()
                    .filter(|h| h.node_id != host.node_id)
                    .cloned()
                    .collect();
            }
            Some((served.clone(), hosts))
        } else {
            None
        };
        if stable.is_none() && canary.is_none() {
            let versions = catalog.versions(name);
            let published: Vec<String> = versions
                .iter()
                .map(|r| r.manifest.version.to_string())
                .collect();
            let message = if versions.iter().any(|r| range.matches(&r.manifest.version)) {
                format!(
                    "{name}@{range}: the deployed version is {}; other matching versions are published but not served",
                    served.manifest.version
                )
            } else {
                format!(
                    "no version of {name} matches {range} (published: {})",
                    published.join(", ")
                )
            };
            return Err(InvokeError::new(
                InvokeErrorKind::NoMatchingVersion,
                message,
            ));
        }
        let resolved = Resolved { stable, canary };
        if resolved.is_empty() {
            return Err(InvokeError::new(
                InvokeErrorKind::NoHost,
                format!("no alive node hosts {name}"),
            ));
        }
        Ok(resolved)
    }

    async fn invoke(
        self: &Arc<Self>,
        request: InvokeRequest,
    ) -> Result<InvokeOutcome, InvokeError> {
        if request.call_depth > MAX_CALL_DEPTH {
            return Err(InvokeError::new(
                InvokeErrorKind::CallDepthExceeded,
                format!(
                    "call depth {} exceeds the limit of {MAX_CALL_DEPTH} (a function calling itself forever?)",
                    request.call_depth
                ),
            ));
        }
        let resolved = self.resolve(&request.function, &request.range)?;
        if let Some(release) = resolved.release_for(&self.me) {
            // Counted, not written out: a local call never needs the JSON text.
            check_input_size(json_len(&request.input))?;
            let served_by = release.manifest.id();
            let output = self.run_local(release, request).await?;
            return Ok(InvokeOutcome {
                output,
                served_by,
                node: self.me.clone(),
            });
        }
        // Written once for every attempt.
        let input = serde_json::to_vec(&request.input).map_err(|e| {
            InvokeError::new(
                InvokeErrorKind::BadInput,
                format!("the input cannot be written as JSON: {e}"),
            )
            .caused_by(e)
        })?;
        check_input_size(input.len())?;
        let mut hosts = resolved.hosts();
        let mut last_error = None;
        while !hosts.is_empty() {
            let ids: Vec<&str> = hosts.iter().map(|(h, _)| h.node_id.as_str()).collect();
            let picked = match self.in_flight.lock() {
                Ok(in_flight) => choice::pick(&ids, &in_flight, |n| rand::random_range(0..n)),
                Err(_) => choice::pick(&ids, &HashMap::new(), |n| rand::random_range(0..n)),
            };
            let Some(position) = picked.and_then(|target| ids.iter().position(|id| *id == target))
            else {
                break;
            };
            let (host, release) = hosts.swap_remove(position);
            match self.run_remote(host, release, &request, &input).await {
                Ok((output, served_by)) => {
                    return Ok(InvokeOutcome {
                        output,
                        // What the host says it ran (it decides between stable and canary too).
                        served_by: if served_by.is_empty() {
                            release.manifest.id()
                        } else {
                            served_by
                        },
                        node: host.node_id.clone(),
                    });
                }
                Err((error, may_have_started)) => {
                    let retry = !may_have_started || release.manifest.idempotent;
                    debug!(%error, node = %host.node_id, retry, "remote attempt failed");
                    if !retry || Instant::now() >= request.deadline {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| InvokeError::new(InvokeErrorKind::NoHost, "no host left to try")))
    }

    async fn serve_remote(
        self: &Arc<Self>,
        invoke: Invoke,
    ) -> Result<(serde_json::Value, String), InvokeError> {
        let bad = |m: String| InvokeError::new(InvokeErrorKind::BadInput, m);
        let range = if invoke.version_range.is_empty() || invoke.version_range == "*" {
            semver::VersionReq::STAR
        } else {
            semver::VersionReq::parse(&invoke.version_range).map_err(|e| {
                bad(format!(
                    "{:?} is not a semver range: {e}",
                    invoke.version_range
                ))
                .caused_by(e)
            })?
        };
        let input: serde_json::Value = serde_json::from_slice(&invoke.input)
            .map_err(|e| bad(format!("the input is not JSON: {e}")).caused_by(e))?;
        let request = InvokeRequest {
            function: invoke.function,
            range,
            input,
            deadline: instant_of(invoke.deadline_unix_ms),
            call_depth: invoke.call_depth,
            idempotency_key: invoke.idempotency_key,
            caller: invoke.caller_principal,
            trace_parent: Some(invoke.trace.traceparent).filter(|t| !t.is_empty()),
        };
        if request.call_depth > MAX_CALL_DEPTH {
            return Err(InvokeError::new(
                InvokeErrorKind::CallDepthExceeded,
                format!("call depth exceeds {MAX_CALL_DEPTH}"),
            ));
        }
        let resolved = self.resolve_arriving(&request).await?;
        let Some(release) = resolved.release_for(&self.me).cloned() else {
            return Err(InvokeError::new(
                InvokeErrorKind::NotHosted,
                format!("{} is not placed on this node", request.function),
            ));
        };
        let output = self.run_local(&release, request).await?;
        Ok((output, release.manifest.id()))
    }

    /// [`Self::resolve`] for a call a peer sent: the peer resolved the function in its catalog,
    /// so a miss here means the record has not arrived yet (a publish reaches peers within a
    /// round trip). Waits for catalog changes, up to [`CATALOG_LAG`] or the call's deadline.
    async fn resolve_arriving(&self, request: &InvokeRequest) -> Result<Resolved, InvokeError> {
        let give_up = (tokio::time::Instant::now() + CATALOG_LAG)
            .min(tokio::time::Instant::from_std(request.deadline));
        let mut catalog = self.catalog.clone();
        loop {
            catalog.borrow_and_update();
            match self.resolve(&request.function, &request.range) {
                Err(e)
                    if matches!(
                        e.kind,
                        InvokeErrorKind::UnknownFunction
                            | InvokeErrorKind::NoMatchingVersion
                            | InvokeErrorKind::NotDeployed
                    ) =>
                {
                    match tokio::time::timeout_at(give_up, catalog.changed()).await {
                        Ok(Ok(())) => continue,
                        _ => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }

    async fn ensure_running(&self, release: &Release) -> Result<Arc<Hosted>, InvokeError> {
        if let Some(hosted) = self
            .instances
            .get(&release.manifest.name)
            .filter(|h| h.release.artifact == release.artifact)
        {
            return Ok(hosted);
        }
        let package = self
            .registry
            .call(
                |reply| RegistryMsg::Package {
                    release: Box::new(release.clone()),
                    reply,
                },
                Some(Duration::from_secs(10)),
            )
            .await
            .map_err(|e| {
                InvokeError::new(InvokeErrorKind::Internal, format!("registry: {e}")).caused_by(e)
            })?
            .success_or(())
            .map_err(|_| {
                InvokeError::new(InvokeErrorKind::Internal, "the registry did not answer")
            })?
            .map_err(|e| InvokeError::new(InvokeErrorKind::Internal, e.to_string()).caused_by(e))?;
        Ok(self.instances.get_or_start(release, &package).await?)
    }

    /// Runs a call on this node's instance and records it in the stats (a call refused as
    /// overloaded never ran and is not counted).
    async fn run_local(
        &self,
        release: &Release,
        request: InvokeRequest,
    ) -> Result<serde_json::Value, InvokeError> {
        let started = Instant::now();
        let mut executing = None;
        let result = self.run_instance(release, request, &mut executing).await;
        if !matches!(&result, Err(e) if e.kind == InvokeErrorKind::Overloaded) {
            let done = Instant::now();
            self.stats.record(stats::Served {
                function: &release.manifest.name,
                version: &release.manifest.version,
                latency: done - started,
                execution: executing.map_or(Duration::ZERO, |at| done - at),
                error: result.as_ref().err().map(|e| e.kind.as_str()),
            });
        }
        result
    }

    async fn run_instance(
        &self,
        release: &Release,
        request: InvokeRequest,
        executing: &mut Option<Instant>,
    ) -> Result<serde_json::Value, InvokeError> {
        let hosted = self.ensure_running(release).await?;
        let Ok(_permit) = hosted.permits.clone().try_acquire_owned() else {
            return Err(InvokeError::new(
                InvokeErrorKind::Overloaded,
                format!(
                    "{} is at its concurrency limit of {}; retry later",
                    hosted.id(),
                    hosted.concurrency
                ),
            ));
        };
        // Calls the function makes are children of this call's span (when traces are exported).
        let meta = CallMeta {
            deadline: request.deadline,
            call_depth: request.call_depth,
            trace_parent: onward_trace(request.trace_parent),
        };
        // The executor, not the actor's mailbox: one task hop less on the hottest path. The
        // sandbox enforces the deadline itself and never leaves a call half-run.
        *executing = Some(Instant::now());
        Ok(hosted.executor.execute(request.input, meta).await?)
    }

    /// One remote attempt; on failure also says whether the call may have started there.
    async fn run_remote(
        &self,
        host: &MemberId,
        release: &Release,
        request: &InvokeRequest,
        input: &[u8],
    ) -> Result<(serde_json::Value, String), (InvokeError, bool)> {
        let _counted = InFlight::new(self, &host.node_id);
        let frame = Frame::Invoke(Invoke {
            function: release.manifest.name.clone(),
            version_range: request.range.to_string(),
            input: input.to_vec(),
            deadline_unix_ms: unix_ms(request.deadline),
            idempotency_key: request.idempotency_key.clone(),
            caller_principal: request.caller.clone(),
            call_depth: request.call_depth,
            trace: TraceContext {
                traceparent: onward_trace(request.trace_parent.clone()).unwrap_or_default(),
                tracestate: String::new(),
            },
        });
        let to = PeerAddr {
            addr: host.addr.clone(),
            node_id: Some(host.node_id.clone()),
        };
        let wait =
            request.deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
        // A live connection is used from this task; otherwise the actor dials (or says why not).
        let direct =
            tokio::time::timeout(wait, self.link.request_live(&host.node_id, &frame)).await;
        let answer = match direct {
            Ok(Some(answer)) => ractor::rpc::CallResult::Success(answer),
            Err(_) => ractor::rpc::CallResult::Timeout,
            Ok(None) => self
                .transport
                .call(
                    |reply| TransportMsg::Request { to, frame, reply },
                    Some(wait),
                )
                .await
                .map_err(|e| {
                    (
                        InvokeError::new(InvokeErrorKind::Internal, e.to_string()).caused_by(e),
                        false,
                    )
                })?,
        };
        match answer {
            ractor::rpc::CallResult::Success(Ok(Frame::InvokeReply(reply))) => {
                match reply.outcome {
                    Ok(bytes) => serde_json::from_slice(&bytes)
                        .map(|output| (output, reply.served_by_version))
                        .map_err(|e| {
                            (
                                InvokeError::new(
                                    InvokeErrorKind::BadOutput,
                                    format!("the host answered with bytes that are not JSON: {e}"),
                                )
                                .caused_by(e),
                                true,
                            )
                        }),
                    Err(failure) => {
                        let error = InvokeError::new(
                            InvokeErrorKind::parse(&failure.kind),
                            failure.message,
                        );
                        let started = !error.never_started();
                        Err((error, started))
                    }
                }
            }
            ractor::rpc::CallResult::Success(Ok(other)) => Err((
                InvokeError::new(
                    InvokeErrorKind::Internal,
                    format!("the host answered {} to Invoke", other.kind_name()),
                ),
                true,
            )),
            ractor::rpc::CallResult::Success(Err(error)) => {
                let never_started = matches!(
                    error,
                    TransportError::Unreachable { .. }
                        | TransportError::BackingOff { .. }
                        | TransportError::ShuttingDown
                );
                Err((
                    InvokeError::new(
                        InvokeErrorKind::Unreachable,
                        format!("node {}: {error}", host.name),
                    )
                    .caused_by(error),
                    !never_started,
                ))
            }
            ractor::rpc::CallResult::Timeout => Err((
                InvokeError::new(
                    InvokeErrorKind::Timeout,
                    "the call did not finish before its deadline",
                ),
                true,
            )),
            ractor::rpc::CallResult::SenderError => Err((
                InvokeError::new(
                    InvokeErrorKind::Internal,
                    "the transport stopped during the call",
                ),
                true,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_deadline_is_capped_and_cannot_overflow() {
        for hostile in [u64::MAX, u64::MAX / 2] {
            let at = instant_of(hostile);
            assert!(at <= Instant::now() + MAX_REMOTE_DEADLINE);
        }
        assert!(instant_of(0) <= Instant::now());
        // A deadline that goes out as unix milliseconds and comes back is the same deadline, off
        // only by what the conversions round off and any stall between a clock read and the next.
        // It is compared with itself, not with a clock read after the trip, so time the test
        // itself takes cannot make it look lost.
        let deadline = Instant::now() + Duration::from_secs(3);
        let round_trip = instant_of(unix_ms(deadline));
        let off = round_trip
            .saturating_duration_since(deadline)
            .max(deadline.saturating_duration_since(round_trip));
        eprintln!("a 3 s deadline is off by {off:?} after the trip through unix milliseconds");
        assert!(off < Duration::from_secs(1), "{off:?} off");
    }
}
