//! One [`Host`] for tests, put together with a builder rather than written by hand per test
//! module: an in-memory kv, secrets, scripted `ctx.call` and `ctx.model` answers, a schedule book,
//! and a record of everything the instance asked for.
//!
//! ```ignore
//! let gate = Gate::new();
//! let host = FakeHost::builder()
//!     .kv(MemoryKv::default())
//!     .secret("db-key", "hunter2")
//!     .on_call(|target, input| Ok(json!({ "target": target, "input": input })))
//!     .call_gate(gate.clone())
//!     .model(|request| Ok(model_reply("hello", 1, 1)))
//!     .build();
//! ```
//!
//! Without `on_call` a call is answered with `{target, input}`; without `model` the node "has no
//! model provider"; a secret that was not given is "not set on node t". Calls can be held at a
//! [`Gate`] the test opens, and the host counts the calls in flight (most at once, answered), so a
//! test asserts what happened instead of how long it took.
//!
//! Compiled for the sandbox's own tests, and for other crates' tests with the `test-host` feature.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{CallMeta, Host, LogLevel, MemoryKv, SandboxError, ScheduleInfo, ScheduleRequest};
use crate::http::{HttpClient, HttpRequest, HttpResponse};
use klf_model::{ModelReply, ModelRequest, Usage};

/// How the host answers `ctx.call(target, input)`; asked when the call is made.
type CallHandler = Arc<dyn Fn(&str, &Value) -> Result<Value, SandboxError> + Send + Sync>;

/// How the host's model provider answers a request.
type ModelHandler = Arc<dyn Fn(&ModelRequest) -> Result<ModelReply, SandboxError> + Send + Sync>;

/// One `ctx.call` as the host received it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCall {
    pub target: String,
    pub input: Value,
    pub meta: CallMeta,
}

/// `{target, input}`: what a host without `on_call` answers.
pub fn echo(target: &str, input: &Value) -> Value {
    json!({ "target": target, "input": input })
}

/// A model reply with `text` from `test-model`, in one attempt.
pub fn model_reply(text: impl Into<String>, input_tokens: u64, output_tokens: u64) -> ModelReply {
    ModelReply {
        finish_reason: None,
        text: text.into(),
        model: "test-model".into(),
        usage: Usage {
            input_tokens,
            output_tokens,
        },
        attempts: 1,
    }
}

/// Where calls wait until the test lets them through: closed when made, and once
/// [`Gate::open`]ed it stays open.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Lets every waiting call, and every later one, through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the gate is open.
    pub async fn pass(&self) {
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// Polls `check` every millisecond until it holds or `timeout` passes; returns whether it held.
/// The timeout only bounds a test that would otherwise hang: it is never what a test asserts.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Calls in flight: made and neither answered nor dropped yet.
#[derive(Default)]
struct Flight {
    now: AtomicUsize,
    most: AtomicUsize,
    answered: AtomicUsize,
}

/// One call in flight; leaves the count when dropped, answered or not.
struct Boarding(Arc<Flight>);

impl Boarding {
    fn board(flight: &Arc<Flight>) -> Self {
        let now = flight.now.fetch_add(1, Ordering::SeqCst) + 1;
        flight.most.fetch_max(now, Ordering::SeqCst);
        Self(flight.clone())
    }

    fn answered(&self) {
        self.0.answered.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Boarding {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A scripted host that records what it is asked. Build it with [`FakeHost::builder`].
pub struct FakeHost {
    node: String,
    kv: MemoryKv,
    secrets: BTreeMap<String, String>,
    on_call: CallHandler,
    call_gate: Option<Gate>,
    call_delay: Option<Duration>,
    model: Option<ModelHandler>,
    http: Option<Arc<HttpClient>>,
    flight: Arc<Flight>,
    logs: Mutex<Vec<(LogLevel, String)>>,
    calls: Mutex<Vec<HostCall>>,
    model_requests: Mutex<Vec<ModelRequest>>,
    /// Every schedule asked for, with its id, cancelled or not.
    scheduled: Mutex<Vec<(String, ScheduleRequest)>>,
    /// The ids of the schedules not cancelled.
    live: Mutex<Vec<String>>,
}

/// Configures a [`FakeHost`].
#[must_use]
pub struct FakeHostBuilder {
    node: String,
    kv: MemoryKv,
    secrets: BTreeMap<String, String>,
    on_call: Option<CallHandler>,
    call_gate: Option<Gate>,
    call_delay: Option<Duration>,
    model: Option<ModelHandler>,
    http: Option<Arc<HttpClient>>,
}

impl FakeHostBuilder {
    /// The node name in the host's error messages (`t` unless set).
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = name.into();
        self
    }

    /// The function's kv namespace, with whatever it already holds.
    pub fn kv(mut self, kv: MemoryKv) -> Self {
        self.kv = kv;
        self
    }

    /// A node secret `ctx.secret(name)` reads.
    pub fn secret(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.secrets.insert(name.into(), value.into());
        self
    }

    /// How `ctx.call(target, input)` is answered (instead of `{target, input}`).
    pub fn on_call(
        mut self,
        answer: impl Fn(&str, &Value) -> Result<Value, SandboxError> + Send + Sync + 'static,
    ) -> Self {
        self.on_call = Some(Arc::new(answer));
        self
    }

    /// Holds every call at `gate` until the test opens it (a gate never opened: calls that never
    /// answer).
    pub fn call_gate(mut self, gate: Gate) -> Self {
        self.call_gate = Some(gate);
        self
    }

    /// Answers every call only after `delay` (for measurements; tests hold calls at a gate).
    pub fn call_delay(mut self, delay: Duration) -> Self {
        self.call_delay = Some(delay);
        self
    }

    /// A model provider answering with `answer`.
    pub fn model(
        mut self,
        answer: impl Fn(&ModelRequest) -> Result<ModelReply, SandboxError> + Send + Sync + 'static,
    ) -> Self {
        self.model = Some(Arc::new(answer));
        self
    }

    /// A real HTTP client behind `ctx.http.fetch` (without one the host cannot reach the network).
    pub fn http(mut self, client: Arc<HttpClient>) -> Self {
        self.http = Some(client);
        self
    }

    pub fn build(self) -> Arc<FakeHost> {
        Arc::new(FakeHost {
            node: self.node,
            kv: self.kv,
            secrets: self.secrets,
            on_call: self
                .on_call
                .unwrap_or_else(|| Arc::new(|target, input| Ok(echo(target, input)))),
            call_gate: self.call_gate,
            call_delay: self.call_delay,
            model: self.model,
            http: self.http,
            flight: Arc::default(),
            logs: Mutex::default(),
            calls: Mutex::default(),
            model_requests: Mutex::default(),
            scheduled: Mutex::default(),
            live: Mutex::default(),
        })
    }
}

impl FakeHost {
    pub fn builder() -> FakeHostBuilder {
        FakeHostBuilder {
            node: "t".into(),
            kv: MemoryKv::default(),
            secrets: BTreeMap::new(),
            on_call: None,
            call_gate: None,
            call_delay: None,
            model: None,
            http: None,
        }
    }

    /// A host with every default: calls answered with `{target, input}` at once.
    pub fn echo() -> Arc<Self> {
        Self::builder().build()
    }

    /// The function's kv namespace.
    pub fn kv(&self) -> &MemoryKv {
        &self.kv
    }

    /// Every `ctx.log` message, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        lock(&self.logs).clone()
    }

    /// Every `ctx.call`, in the order the host received them.
    pub fn calls(&self) -> Vec<HostCall> {
        lock(&self.calls).clone()
    }

    /// Calls made and neither answered nor given up yet.
    pub fn calls_in_flight(&self) -> usize {
        self.flight.now.load(Ordering::SeqCst)
    }

    /// The most calls that were ever in flight at once.
    pub fn most_calls_in_flight(&self) -> usize {
        self.flight.most.load(Ordering::SeqCst)
    }

    /// Calls the host answered (not counting those dropped before their answer).
    pub fn calls_answered(&self) -> usize {
        self.flight.answered.load(Ordering::SeqCst)
    }

    /// Every request the model was asked, in order.
    pub fn model_requests(&self) -> Vec<ModelRequest> {
        lock(&self.model_requests).clone()
    }

    /// Every schedule asked for, with its id, including those cancelled since.
    pub fn scheduled(&self) -> Vec<(String, ScheduleRequest)> {
        lock(&self.scheduled).clone()
    }
}

fn unix_ms_after(delay: Duration) -> u64 {
    (SystemTime::now() + delay)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Host for FakeHost {
    fn call(
        &self,
        target: String,
        input: Value,
        meta: CallMeta,
    ) -> BoxFuture<'static, Result<Value, SandboxError>> {
        let answer = (self.on_call)(&target, &input);
        lock(&self.calls).push(HostCall {
            target,
            input,
            meta,
        });
        let boarding = Boarding::board(&self.flight);
        let (gate, delay) = (self.call_gate.clone(), self.call_delay);
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.pass().await;
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            // A real hop: the answer arrives on a later turn of the event loop.
            tokio::task::yield_now().await;
            boarding.answered();
            answer
        })
    }

    fn kv_get(&self, key: &str) -> Result<Option<Value>, SandboxError> {
        Ok(self.kv.get(key))
    }

    fn kv_put(&self, key: &str, value: Value) -> Result<(), SandboxError> {
        self.kv.put(key, value);
        Ok(())
    }

    fn kv_delete(&self, key: &str) -> Result<(), SandboxError> {
        self.kv.delete(key);
        Ok(())
    }

    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, SandboxError> {
        Ok(self.kv.list(prefix))
    }

    fn log(&self, level: LogLevel, message: &str) {
        lock(&self.logs).push((level, message.to_string()));
    }

    fn secret(&self, name: &str) -> Result<String, SandboxError> {
        self.secrets.get(name).cloned().ok_or_else(|| {
            SandboxError::Secret(format!("secret {name:?} is not set on node {}", self.node))
        })
    }

    fn model(
        &self,
        request: ModelRequest,
        _meta: CallMeta,
    ) -> BoxFuture<'static, Result<ModelReply, SandboxError>> {
        let answer = match &self.model {
            Some(model) => model(&request),
            None => Err(SandboxError::ModelUnavailable(
                klf_model::unavailable_message(&self.node),
            )),
        };
        lock(&self.model_requests).push(request);
        Box::pin(async move { answer })
    }

    fn http(
        &self,
        request: HttpRequest,
        _meta: CallMeta,
    ) -> BoxFuture<'static, Result<HttpResponse, SandboxError>> {
        let client = self.http.clone();
        Box::pin(async move {
            let Some(client) = client else {
                return Err(SandboxError::Http(
                    "this host cannot reach the network".into(),
                ));
            };
            let span = tracing::info_span!(
                "http.request",
                http.request.method = tracing::field::Empty,
                url.full = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            );
            client.fetch("subject", request, &span).await
        })
    }

    fn schedule(&self, request: ScheduleRequest) -> Result<String, SandboxError> {
        let mut scheduled = lock(&self.scheduled);
        let id = format!("s-{}", scheduled.len() + 1);
        scheduled.push((id.clone(), request));
        lock(&self.live).push(id.clone());
        Ok(id)
    }

    fn unschedule(&self, id: &str) -> bool {
        let mut live = lock(&self.live);
        let before = live.len();
        live.retain(|known| known != id);
        live.len() < before
    }

    fn schedules(&self) -> Vec<ScheduleInfo> {
        let live = lock(&self.live).clone();
        self.scheduled()
            .into_iter()
            .filter(|(id, _)| live.contains(id))
            .map(|(id, request)| ScheduleInfo {
                id,
                target: request.target,
                kind: if request.every.is_some() {
                    "every"
                } else {
                    "after"
                },
                interval_ms: request.every.map(|every| every.as_millis() as u64),
                next_at: unix_ms_after(request.delay),
                runs: 0,
            })
            .collect()
    }
}
