//! What a function instance's `ctx` reaches: the [`Host`] the sandbox defines, implemented here,
//! above it, by the router (calls, schedules), the store (kv), the node's secrets directory
//! (secret), its model provider (model) and tracing (log).

use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;
use tracing::{Instrument, debug, error, info, warn};

use super::stats::External;
use super::{InvokeRequest, Router, RouterInner};
use klf_functions::http::{HttpClient, HttpRequest, HttpResponse};
use klf_functions::sandbox::{
    CallMeta, Cause, Host, LogLevel, SandboxError, ScheduleInfo, ScheduleRequest,
};
use klf_model::{ModelProvider, ModelRequest, unavailable_message};
use klf_registry::Release;
use klf_store::{Store, off_worker};

/// Keys a function may list at once.
const MAX_KV_LIST: usize = 1000;
/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// Live schedules one instance may hold.
const MAX_SCHEDULES: usize = 64;
/// How long one scheduled call may run.
const SCHEDULED_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the node offers every function's host beyond calls and kv.
#[derive(Clone, Default)]
pub struct HostServices {
    /// The node's name, for messages.
    pub node_name: String,
    /// Where `ctx.secret(NAME)` reads `NAME` from (`<data>/secrets`).
    pub secrets_dir: PathBuf,
    /// The model provider behind `ctx.model`, if the node has one.
    pub model: Option<Arc<dyn ModelProvider>>,
    /// The client behind `ctx.http.fetch` (with the operator's address allowances); `None`: the
    /// node reaches no network for functions.
    pub http: Option<Arc<HttpClient>>,
}

/// The host of one instance: it knows which function it serves, so `kv` is that function's own
/// namespace and `call` applies the ranges its manifest declares.
pub struct NodeHost {
    router: Weak<RouterInner>,
    function: String,
    /// The version served, under which external use is recorded in the stats book.
    version: semver::Version,
    dependencies: BTreeMap<String, semver::VersionReq>,
    /// Weak: the store belongs to the node; an instance outliving it gets an error, not the file.
    store: Weak<Store>,
    services: HostServices,
    schedules: Arc<Schedules>,
}

/// The instance's live schedules. They end with the instance: a schedule is in-memory state of
/// the node that hosts the function, like a timer in a process.
#[derive(Default)]
struct Schedules {
    next: AtomicU64,
    live: Mutex<HashMap<String, (ScheduleInfo, AbortHandle)>>,
}

impl Schedules {
    fn update(&self, id: &str, change: impl FnOnce(&mut ScheduleInfo)) {
        if let Ok(mut live) = self.live.lock()
            && let Some((info, _)) = live.get_mut(id)
        {
            change(info);
        }
    }

    fn remove(&self, id: &str) -> bool {
        let removed = self.live.lock().ok().and_then(|mut live| live.remove(id));
        match removed {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

impl Drop for NodeHost {
    fn drop(&mut self) {
        if let Ok(mut live) = self.schedules.live.lock() {
            for (_, (_, task)) in live.drain() {
                task.abort();
            }
        }
    }
}

fn unix_ms_after(delay: Duration) -> u64 {
    (SystemTime::now() + delay)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NodeHost {
    pub(crate) fn new(
        router: Weak<RouterInner>,
        release: &Release,
        store: Weak<Store>,
        services: HostServices,
    ) -> Self {
        Self {
            router,
            function: release.manifest.name.clone(),
            version: release.manifest.version.clone(),
            dependencies: release.manifest.dependencies.clone(),
            store,
            services,
            schedules: Arc::default(),
        }
    }

    /// Routes a call on behalf of this function: `target` is `NAME` or `NAME@RANGE`.
    fn route(
        &self,
        target: String,
        input: serde_json::Value,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<serde_json::Value, SandboxError>> {
        let router = self.router.upgrade();
        let (name, explicit) = match target.split_once('@') {
            Some((name, range)) => (name.to_string(), Some(range.to_string())),
            None => (target.clone(), None),
        };
        let declared = self.dependencies.get(&name).cloned();
        let caller = self.function.clone();
        Box::pin(async move {
            let Some(router) = router else {
                return Err(SandboxError::Host("the node is shutting down".into()));
            };
            // An explicit range must fit inside what the manifest declared; without one, the
            // declared range applies.
            let range = match (explicit, declared) {
                (Some(text), _) => semver::VersionReq::parse(&text).map_err(|e| {
                    SandboxError::host_failure(format!("{text:?} is not a semver range"), e)
                })?,
                (None, Some(declared)) => declared,
                (None, None) => semver::VersionReq::STAR,
            };
            let request = InvokeRequest {
                function: name,
                range,
                input,
                deadline: meta.deadline,
                call_depth: meta.call_depth.saturating_add(1),
                idempotency_key: None,
                caller,
                trace_parent: meta.trace_parent,
            };
            Router::from_inner(router)
                .invoke(request)
                .await
                .map(|outcome| outcome.output)
                .map_err(|e| SandboxError::Host(format!("{} ({})", e.message, e.kind.as_str())))
        })
    }
}

fn kv_error(e: impl std::error::Error + Send + Sync + 'static) -> SandboxError {
    SandboxError::host_failure("kv", e)
}

impl NodeHost {
    fn store(&self) -> Result<Arc<Store>, SandboxError> {
        self.store
            .upgrade()
            .ok_or_else(|| SandboxError::Host("kv: the node is shutting down".into()))
    }
}

impl Host for NodeHost {
    fn call(
        &self,
        target: String,
        input: serde_json::Value,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<serde_json::Value, SandboxError>> {
        self.route(target, input, meta)
    }

    fn kv_get(&self, key: &str) -> Result<Option<serde_json::Value>, SandboxError> {
        match self
            .store()?
            .kv_get(&self.function, key)
            .map_err(kv_error)?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(kv_error),
            None => Ok(None),
        }
    }

    /// A write commits (fsync), and the sandbox calls this synchronously from inside the
    /// JavaScript engine: [`off_worker`] lets the runtime worker's other tasks (every other
    /// function's calls) go on elsewhere while the disk is slow.
    fn kv_put(&self, key: &str, value: serde_json::Value) -> Result<(), SandboxError> {
        let store = self.store()?;
        let value = value.to_string();
        off_worker(|| store.kv_put(&self.function, key, value.as_bytes())).map_err(kv_error)
    }

    /// Commits like [`NodeHost::kv_put`], so off the worker too.
    fn kv_delete(&self, key: &str) -> Result<(), SandboxError> {
        let store = self.store()?;
        off_worker(|| store.kv_delete(&self.function, key))
            .map(drop)
            .map_err(kv_error)
    }

    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, SandboxError> {
        self.store()?
            .kv_list(&self.function, prefix, MAX_KV_LIST)
            .map_err(kv_error)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let function = self.function.as_str();
        match level {
            LogLevel::Debug => debug!(target: "klf::function", %function, "{message}"),
            LogLevel::Info => info!(target: "klf::function", %function, "{message}"),
            LogLevel::Warn => warn!(target: "klf::function", %function, "{message}"),
            LogLevel::Error => error!(target: "klf::function", %function, "{message}"),
        }
    }

    fn secret(&self, name: &str) -> Result<String, SandboxError> {
        let path = self.services.secrets_dir.join(name);
        let node = &self.services.node_name;
        let metadata = std::fs::metadata(&path).map_err(|_| {
            SandboxError::Secret(format!(
                "secret {name:?} is not set on node {node}: create the file {}",
                path.display()
            ))
        })?;
        if metadata.len() > MAX_SECRET_BYTES {
            return Err(SandboxError::Secret(format!(
                "secret {name:?} on node {node} is over {MAX_SECRET_BYTES} bytes"
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            SandboxError::Secret(format!(
                "secret {name:?} on node {node} cannot be read as UTF-8 text from {}: {e}",
                path.display()
            ))
        })?;
        // Files written by editors and `echo` end in a newline that is not part of the secret.
        Ok(text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text)
            .to_string())
    }

    fn model(
        &self,
        request: ModelRequest,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<klf_model::ModelReply, SandboxError>> {
        let provider = self.services.model.clone();
        let node = self.services.node_name.clone();
        let function = self.function.clone();
        let (router, version) = (self.router.clone(), self.version.clone());
        Box::pin(async move {
            let Some(provider) = provider else {
                return Err(SandboxError::ModelUnavailable(unavailable_message(&node)));
            };
            let timeout = meta.deadline.saturating_duration_since(Instant::now());
            let reply = provider
                .complete(request, timeout)
                .await
                .map_err(|e| SandboxError::ModelFailure(Cause::new(e)))?;
            info!(
                target: "klf::model",
                %function,
                gen_ai.request.model = %reply.model,
                gen_ai.usage.input_tokens = reply.usage.input_tokens,
                gen_ai.usage.output_tokens = reply.usage.output_tokens,
                "model call"
            );
            if let Some(router) = router.upgrade() {
                router.stats.record_external(
                    &function,
                    &version,
                    External {
                        model_tokens_in: reply.usage.input_tokens,
                        model_tokens_out: reply.usage.output_tokens,
                    },
                );
            }
            Ok(reply)
        })
    }

    fn http(
        &self,
        request: HttpRequest,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<HttpResponse, SandboxError>> {
        let client = self.services.http.clone();
        let function = self.function.clone();
        let host = request.url.host_str().unwrap_or_default().to_string();
        let (router, version) = (self.router.clone(), self.version.clone());
        Box::pin(async move {
            let Some(client) = client else {
                return Err(SandboxError::Http(
                    "this node has no HTTP client for functions".into(),
                ));
            };
            let span = tracing::info_span!(
                target: super::trace::TARGET,
                "http.request",
                otel.kind = "client",
                function = %function,
                http.request.method = tracing::field::Empty,
                url.full = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                error.kind = tracing::field::Empty,
            );
            super::trace::adopt(&span, meta.trace_parent.as_deref());
            let result = client
                .fetch(&function, request, &span)
                .instrument(span.clone())
                .await;
            if result.is_ok()
                && let Some(router) = router.upgrade()
            {
                router.stats.record_http(&function, &version, &host);
            }
            match &result {
                Ok(response) => debug!(
                    target: "klf::http",
                    %function,
                    url = %response.url,
                    status = response.status,
                    "http request"
                ),
                Err(e) => {
                    span.record("error.kind", e.kind());
                    debug!(target: "klf::http", %function, "http request failed: {e}");
                }
            }
            result
        })
    }

    fn schedule(&self, request: ScheduleRequest) -> Result<String, SandboxError> {
        let mut live = self
            .schedules
            .live
            .lock()
            .map_err(|_| SandboxError::Internal("schedule table poisoned".into()))?;
        if live.len() >= MAX_SCHEDULES {
            return Err(SandboxError::Schedule(format!(
                "{} already has {MAX_SCHEDULES} schedules on this node; cancel one first",
                self.function
            )));
        }
        let id = format!(
            "{}-{}",
            self.function,
            self.schedules.next.fetch_add(1, Ordering::Relaxed) + 1
        );
        let info = ScheduleInfo {
            id: id.clone(),
            target: request.target.clone(),
            kind: if request.every.is_some() {
                "every"
            } else {
                "after"
            },
            interval_ms: request.every.map(|every| every.as_millis() as u64),
            next_at: unix_ms_after(request.delay),
            runs: 0,
        };
        // The task holds no strong reference to this host: dropping the host ends it.
        let route = NodeHost {
            router: self.router.clone(),
            function: self.function.clone(),
            version: self.version.clone(),
            dependencies: self.dependencies.clone(),
            store: self.store.clone(),
            services: self.services.clone(),
            schedules: Arc::default(),
        };
        let schedules = Arc::downgrade(&self.schedules);
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            let mut wait = request.delay;
            loop {
                tokio::time::sleep(wait).await;
                let meta = CallMeta::with_timeout(SCHEDULED_CALL_TIMEOUT);
                let outcome = route
                    .route(request.target.clone(), request.input.clone(), meta)
                    .await;
                if let Err(e) = &outcome {
                    warn!(function = %route.function, schedule = %task_id, "scheduled call failed: {e}");
                }
                let Some(schedules) = schedules.upgrade() else {
                    return;
                };
                match request.every {
                    Some(every) => {
                        schedules.update(&task_id, |info| {
                            info.runs += 1;
                            info.next_at = unix_ms_after(every);
                        });
                        wait = every;
                    }
                    None => {
                        // Not `remove`: it would abort this very task mid-way.
                        if let Ok(mut live) = schedules.live.lock() {
                            live.remove(&task_id);
                        }
                        return;
                    }
                }
            }
        });
        live.insert(id.clone(), (info, task.abort_handle()));
        debug!(function = %self.function, schedule = %id, "scheduled");
        Ok(id)
    }

    fn unschedule(&self, id: &str) -> bool {
        self.schedules.remove(id)
    }

    fn schedules(&self) -> Vec<ScheduleInfo> {
        let mut list: Vec<ScheduleInfo> = self
            .schedules
            .live
            .lock()
            .map(|live| live.values().map(|(info, _)| info.clone()).collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}
