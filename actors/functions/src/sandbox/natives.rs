//! The natives: the host capabilities as `klf:base` reaches them (`ctx.call`, `ctx.kv`,
//! `ctx.log`, `ctx.now`, `ctx.sleep`, `ctx.crypto`, `ctx.secret`, `ctx.model`, `ctx.schedule`,
//! `ctx.http`), each checked here against what the manifest grants.
//!
//! A native never throws for a refused or failed request: it answers `{id, kind, message}`, which
//! `klf:base` throws as a `HostError`. The error itself stays here under that id, so that if it
//! propagates out of the function unchanged the caller gets it typed (`CapabilityDenied`,
//! `Host`, `Timeout`), not as a generic `User` error.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rquickjs::{Ctx, Function, IntoJs, Object, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::crypto;
use super::engine::{EngineState, clear_exception, timeout};
use super::{CallMeta, FunctionCode, LogLevel, SandboxError, ScheduleRequest};
use crate::http::{HttpGrant, HttpHeader, HttpRequest, HttpResponse, policy};
use klf_model::{Message, ModelRequest};

/// Longest message a function may log at once.
const MAX_LOG_BYTES: usize = 16 * 1024;
/// Host errors remembered so that they can be recognised when they propagate.
const MAX_HOST_ERRORS: usize = 256;
/// Global through which the natives reach `klf:base` (which removes it).
const HOST_GLOBAL: &str = "__klf_host__";

/// What the manifest grants, checked by every native.
pub(super) struct Grants {
    call: bool,
    kv: bool,
    log: bool,
    crypto: bool,
    secret: bool,
    model: bool,
    schedule: bool,
    /// `[http]` when `http` is granted.
    http: Option<Arc<HttpGrant>>,
    /// Requests the instance may have in flight (`[http] concurrency`).
    http_slots: Arc<Semaphore>,
    /// Requests the function may start per second (`[http] per_second`).
    http_rate: Mutex<RateBucket>,
    /// The function's own name: `ctx.schedule` may target it.
    name: String,
    dependencies: HashSet<String>,
    secrets: HashSet<String>,
}

impl Grants {
    pub(super) fn new(code: &FunctionCode) -> Self {
        let granted = |name: &str| code.capabilities.iter().any(|c| c == name);
        for capability in &code.capabilities {
            if !matches!(
                capability.as_str(),
                "call"
                    | "kv"
                    | "log"
                    | "now"
                    | "config"
                    | "crypto"
                    | "secret"
                    | "model"
                    | "schedule"
                    | "http"
            ) {
                debug!(function = %code.id(), capability, "no such capability in this sandbox");
            }
        }
        Self {
            call: granted("call"),
            kv: granted("kv"),
            log: granted("log"),
            crypto: granted("crypto"),
            secret: granted("secret"),
            model: granted("model"),
            schedule: granted("schedule"),
            http: granted("http").then(|| Arc::new(code.http.clone())),
            http_slots: Arc::new(Semaphore::new(
                usize::try_from(code.http.concurrency).unwrap_or(usize::MAX),
            )),
            http_rate: Mutex::new(RateBucket::new(code.http.per_second)),
            name: code.name.clone(),
            dependencies: code.dependencies.iter().cloned().collect(),
            secrets: code.secrets.iter().cloned().collect(),
        }
    }
}

/// A native's answer: a value (JSON text, or undefined), or a failed request that `klf:base`
/// turns into a `HostError`.
enum Reply {
    Value(Option<String>),
    Failed {
        id: u64,
        kind: &'static str,
        message: String,
    },
}

impl<'js> IntoJs<'js> for Reply {
    fn into_js(self, ctx: &Ctx<'js>) -> rquickjs::Result<Value<'js>> {
        match self {
            Reply::Value(Some(text)) => text.into_js(ctx),
            Reply::Value(None) => Ok(Value::new_undefined(ctx.clone())),
            Reply::Failed { id, kind, message } => {
                let object = Object::new(ctx.clone())?;
                object.set("id", id as f64)?;
                object.set("kind", kind)?;
                object.set("message", message)?;
                Ok(object.into_value())
            }
        }
    }
}

/// Host errors by id, so that one that propagates out of the function keeps its type.
#[derive(Default)]
pub(super) struct HostErrors {
    next: AtomicU64,
    recent: Mutex<BTreeMap<u64, SandboxError>>,
}

impl HostErrors {
    fn reply(&self, error: SandboxError) -> Reply {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let reply = Reply::Failed {
            id,
            kind: error.kind(),
            message: error.to_string(),
        };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.insert(id, error);
        while recent.len() > MAX_HOST_ERRORS {
            recent.pop_first();
        }
        reply
    }

    pub(super) fn get(&self, id: u64) -> Option<SandboxError> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.get(&id).cloned()
    }
}

fn denied(capability: &str, what: &str) -> SandboxError {
    SandboxError::CapabilityDenied {
        capability: capability.to_string(),
        detail: format!(
            "{what} needs the \"{capability}\" capability; add it to `capabilities` in klf.toml"
        ),
    }
}

impl EngineState {
    fn kv_get(&self, key: &str) -> Reply {
        if !self.grants.kv {
            return self.errors.reply(denied("kv", "ctx.kv.get"));
        }
        match self.host.kv_get(key) {
            Ok(value) => Reply::Value(value.map(|v| v.to_string())),
            Err(error) => self.errors.reply(error),
        }
    }

    fn kv_put(&self, key: &str, value: &str) -> Reply {
        if !self.grants.kv {
            return self.errors.reply(denied("kv", "ctx.kv.put"));
        }
        let value = match serde_json::from_str(value) {
            Ok(value) => value,
            Err(e) => {
                return self
                    .errors
                    .reply(SandboxError::Internal(format!("kv value: {e}")));
            }
        };
        match self.host.kv_put(key, value) {
            Ok(()) => Reply::Value(None),
            Err(error) => self.errors.reply(error),
        }
    }

    fn kv_delete(&self, key: &str) -> Reply {
        if !self.grants.kv {
            return self.errors.reply(denied("kv", "ctx.kv.delete"));
        }
        match self.host.kv_delete(key) {
            Ok(()) => Reply::Value(None),
            Err(error) => self.errors.reply(error),
        }
    }

    fn kv_list(&self, prefix: &str) -> Reply {
        if !self.grants.kv {
            return self.errors.reply(denied("kv", "ctx.kv.list"));
        }
        match self.host.kv_list(prefix) {
            Ok(keys) => Reply::Value(Some(serde_json::Value::from(keys).to_string())),
            Err(error) => self.errors.reply(error),
        }
    }

    fn log(&self, level: &str, message: &str) -> Reply {
        if !self.grants.log {
            return self.errors.reply(denied("log", "ctx.log"));
        }
        self.host
            .log(LogLevel::parse(level), truncate(message, MAX_LOG_BYTES));
        Reply::Value(None)
    }

    /// Checks a `ctx.call` and, if allowed, starts it on its own task, bounded by the deadline.
    fn start_call(
        &self,
        call_id: u64,
        target: String,
        input: &str,
    ) -> Result<HostTask, SandboxError> {
        if !self.grants.call {
            return Err(denied("call", "ctx.call"));
        }
        self.check_target("call", &target, false)?;
        let input: serde_json::Value = serde_json::from_str(input)
            .map_err(|e| SandboxError::Internal(format!("ctx.call input: {e}")))?;
        let meta = self.calls.meta_for(call_id);
        let host = self.host.clone();
        Ok(spawn_bounded(meta, move |meta| {
            host.call(target, input, meta)
        }))
    }
}

/// Longest a schedule may wait or repeat: a week.
const MAX_SCHEDULE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest period of a repeating schedule.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Arguments of a `ctx.crypto` or `ctx.schedule` request, as `klf:base` sends them (a JSON array).
fn args(text: &str) -> Vec<serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

fn arg_str<'a>(args: &'a [serde_json::Value], index: usize, what: &str) -> Result<&'a str, String> {
    args.get(index)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("{what} must be a string"))
}

fn millis(value: Option<&serde_json::Value>, what: &str) -> Result<Duration, String> {
    let ms = value
        .and_then(serde_json::Value::as_f64)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .ok_or_else(|| format!("{what} must be a non-negative number of milliseconds"))?;
    // A number too large for a Duration (1e300) is as much "longer than a week" as 1e12 is; the
    // checked conversion keeps it from panicking the instance's task.
    Duration::try_from_secs_f64(ms / 1000.0)
        .ok()
        .filter(|duration| *duration <= MAX_SCHEDULE)
        .ok_or_else(|| format!("{what} of {ms} ms is longer than a week"))
}

impl EngineState {
    /// Checks that `target` may be reached: a declared dependency, or (for schedules) itself.
    fn check_target(
        &self,
        capability: &str,
        target: &str,
        itself: bool,
    ) -> Result<(), SandboxError> {
        let name = target.split('@').next().unwrap_or_default();
        if self.grants.dependencies.contains(name) || (itself && name == self.grants.name) {
            return Ok(());
        }
        let mut declared: Vec<&str> = self
            .grants
            .dependencies
            .iter()
            .map(String::as_str)
            .collect();
        declared.sort_unstable();
        let declared = if declared.is_empty() {
            "none".to_string()
        } else {
            declared.join(", ")
        };
        Err(SandboxError::CapabilityDenied {
            capability: capability.to_string(),
            detail: format!(
                "\"{name}\" is not a declared dependency of {}; declare it under \
                 [dependencies] in klf.toml (declared: {declared})",
                self.function_id
            ),
        })
    }

    fn secret_value(&self, name: &str) -> Result<String, SandboxError> {
        if !self.grants.secret {
            return Err(denied("secret", "ctx.secret"));
        }
        if !self.grants.secrets.contains(name) {
            return Err(SandboxError::CapabilityDenied {
                capability: "secret".to_string(),
                detail: format!(
                    "secret {name:?} is not declared by {}; list it in `secrets` in klf.toml",
                    self.function_id
                ),
            });
        }
        self.host.secret(name)
    }

    fn secret(&self, name: &str) -> Reply {
        match self.secret_value(name) {
            Ok(value) => Reply::Value(Some(serde_json::Value::from(value).to_string())),
            Err(error) => self.errors.reply(error),
        }
    }

    /// The 32-byte key an encrypt/decrypt request names: `{secret: NAME}` or `{key: BASE64}`.
    fn aead_key(&self, options: &serde_json::Value) -> Result<[u8; 32], SandboxError> {
        if let Some(name) = options.get("secret").and_then(serde_json::Value::as_str) {
            return Ok(crypto::key_from_secret(&self.secret_value(name)?));
        }
        if let Some(key) = options.get("key").and_then(serde_json::Value::as_str) {
            return crypto::key_from_base64(key);
        }
        Err(SandboxError::Crypto(
            "give the key as {secret: \"NAME\"} (a secret declared in klf.toml) or {key: BASE64}"
                .into(),
        ))
    }

    fn crypto_op(
        &self,
        op: &str,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, SandboxError> {
        use serde_json::Value;
        let bad = |message: String| SandboxError::Crypto(format!("{op}: {message}"));
        let options = |index: usize| args.get(index).cloned().unwrap_or(Value::Null);
        let aad = |options: &Value| {
            options
                .get("aad")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(match op {
            "hash" => Value::from(crypto::hash(
                arg_str(args, 0, "the algorithm").map_err(bad)?,
                arg_str(args, 1, "the data").map_err(bad)?,
            )?),
            "hmac" => Value::from(crypto::hmac_hex(
                arg_str(args, 0, "the algorithm").map_err(bad)?,
                arg_str(args, 1, "the key").map_err(bad)?,
                arg_str(args, 2, "the data").map_err(bad)?,
            )?),
            "hmacVerify" => Value::from(crypto::hmac_verify(
                arg_str(args, 0, "the algorithm").map_err(bad)?,
                arg_str(args, 1, "the key").map_err(bad)?,
                arg_str(args, 2, "the data").map_err(bad)?,
                arg_str(args, 3, "the MAC").unwrap_or_default(),
            )?),
            "equal" => Value::from(crypto::equal(
                arg_str(args, 0, "the first value").map_err(bad)?,
                arg_str(args, 1, "the second value").map_err(bad)?,
            )),
            "encrypt" => {
                let plaintext = arg_str(args, 0, "the plaintext").map_err(bad)?;
                let options = options(1);
                let alg = options
                    .get("alg")
                    .and_then(Value::as_str)
                    .unwrap_or("chacha20-poly1305");
                crypto::encrypt(alg, &self.aead_key(&options)?, plaintext, &aad(&options))?
            }
            "decrypt" => {
                let envelope = options(0);
                let options = options(1);
                Value::from(crypto::decrypt(
                    &envelope,
                    &self.aead_key(&options)?,
                    &aad(&options),
                )?)
            }
            "randomBytes" => {
                let n = args
                    .first()
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("the length must be a non-negative integer".into()))?;
                Value::from(crypto::random_base64(
                    usize::try_from(n).unwrap_or(usize::MAX),
                )?)
            }
            "generateKey" => Value::from(crypto::random_base64(32)?),
            "randomUUID" => Value::from(crypto::random_uuid()?),
            other => return Err(bad(format!("no such operation {other:?}"))),
        })
    }

    fn crypto(&self, op: &str, args_json: &str) -> Reply {
        if !self.grants.crypto {
            return self.errors.reply(denied("crypto", "ctx.crypto"));
        }
        match self.crypto_op(op, &args(args_json)) {
            Ok(value) => Reply::Value(Some(value.to_string())),
            Err(error) => self.errors.reply(error),
        }
    }

    fn schedule_op(
        &self,
        op: &str,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, SandboxError> {
        let bad = |message: String| SandboxError::Schedule(format!("{op}: {message}"));
        match op {
            "after" | "every" => {
                let delay = millis(args.first(), "the delay").map_err(bad)?;
                let target = arg_str(args, 1, "the target").map_err(bad)?.to_string();
                self.check_target("schedule", &target, true)?;
                let every = if op == "every" {
                    if delay < MIN_PERIOD {
                        return Err(bad(format!(
                            "the interval must be at least {} ms",
                            MIN_PERIOD.as_millis()
                        )));
                    }
                    Some(delay)
                } else {
                    None
                };
                let input = args.get(2).cloned().unwrap_or(serde_json::Value::Null);
                let id = self.host.schedule(ScheduleRequest {
                    target,
                    input,
                    delay,
                    every,
                })?;
                Ok(serde_json::Value::from(id))
            }
            "cancel" => {
                let id = arg_str(args, 0, "the schedule id").map_err(bad)?;
                Ok(serde_json::Value::from(self.host.unschedule(id)))
            }
            "list" => serde_json::to_value(self.host.schedules())
                .map_err(|e| SandboxError::Internal(format!("schedules: {e}"))),
            other => Err(bad(format!("no such operation {other:?}"))),
        }
    }

    fn schedule(&self, op: &str, args_json: &str) -> Reply {
        if !self.grants.schedule {
            return self.errors.reply(denied("schedule", "ctx.schedule"));
        }
        match self.schedule_op(op, &args(args_json)) {
            Ok(value) => Reply::Value(Some(value.to_string())),
            Err(error) => self.errors.reply(error),
        }
    }

    /// Checks a `ctx.model` request and starts it on its own task, bounded by the deadline.
    fn start_model(&self, call_id: u64, request: &str) -> Result<HostTask, SandboxError> {
        if !self.grants.model {
            return Err(denied("model", "ctx.model"));
        }
        let request =
            model_request(request).map_err(|e| SandboxError::Model(format!("bad request: {e}")))?;
        let meta = self.calls.meta_for(call_id);
        let host = self.host.clone();
        Ok(spawn_bounded(meta, move |meta| {
            let reply = host.model(request, meta);
            async move {
                let reply = reply.await?;
                Ok(serde_json::json!({
                    "text": reply.text,
                    "model": reply.model,
                    "usage": {
                        "inputTokens": reply.usage.input_tokens,
                        "outputTokens": reply.usage.output_tokens,
                    },
                }))
            }
        }))
    }
}

/// `{messages | prompt, system?, maxTokens?, temperature?, json?}` → a [`ModelRequest`].
fn model_request(text: &str) -> Result<ModelRequest, String> {
    use serde_json::Value;
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    if let Some(system) = value.get("system").and_then(Value::as_str) {
        messages.push(Message {
            role: "system".into(),
            content: system.to_string(),
        });
    }
    match (value.get("messages"), value.get("prompt")) {
        (Some(Value::Array(items)), _) => {
            for (index, item) in items.iter().enumerate() {
                let field = |name: &str| {
                    item.get(name)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("messages[{index}].{name} must be a string"))
                };
                let role = field("role")?;
                if !["system", "user", "assistant"].contains(&role.as_str()) {
                    return Err(format!(
                        "messages[{index}].role must be system, user or assistant, not {role:?}"
                    ));
                }
                messages.push(Message {
                    role,
                    content: field("content")?,
                });
            }
        }
        (Some(_), _) => return Err("messages must be an array of {role, content}".into()),
        (None, Some(Value::String(prompt))) => messages.push(Message {
            role: "user".into(),
            content: prompt.clone(),
        }),
        _ => {
            return Err(
                "give `messages` (an array of {role, content}) or a `prompt` string".into(),
            );
        }
    }
    let max_tokens = match value.get("maxTokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("maxTokens must be a positive integer")?,
        ),
    };
    let temperature = match value.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|t| (0.0..=2.0).contains(t))
                .ok_or("temperature must be a number from 0 to 2")? as f32,
        ),
    };
    let schema = match value.get("schema") {
        None | Some(Value::Null) => None,
        Some(schema @ Value::Object(_)) => Some(schema.clone()),
        Some(_) => return Err("schema must be a JSON Schema object".into()),
    };
    let json = value.get("json").and_then(Value::as_bool).unwrap_or(false) || schema.is_some();
    Ok(ModelRequest {
        messages,
        max_tokens,
        temperature,
        json,
        schema,
    })
}

/// A token bucket of `per_second` tokens, refilled continuously: the requests per second a
/// function may start.
pub(super) struct RateBucket {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl RateBucket {
    fn new(per_second: u64) -> Self {
        Self {
            per_second: per_second as f64,
            tokens: per_second as f64,
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Largest `timeoutMs` or `ctx.sleep` accepted (the call's deadline is the real bound).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

impl EngineState {
    /// `{url, method?, headers?, body?, json?, timeoutMs?}` → a checked [`HttpRequest`] and the
    /// time it may take.
    fn http_request(
        &self,
        grant: &Arc<HttpGrant>,
        text: &str,
    ) -> Result<(HttpRequest, Option<Duration>), SandboxError> {
        use serde_json::Value;
        let bad = |message: String| SandboxError::Http(format!("fetch: {message}"));
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("bad options: {e}")))?;
        let url_text = value
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the URL must be a string".into()))?;
        let url = reqwest::Url::parse(url_text)
            .map_err(|e| bad(format!("{url_text:?} is not an absolute URL: {e}")))?;
        policy::check_url(&grant.allow, &url).map_err(|detail| SandboxError::CapabilityDenied {
            capability: "http".into(),
            detail,
        })?;
        let method = match value.get("method") {
            None | Some(Value::Null) => reqwest::Method::GET,
            Some(Value::String(m)) => {
                reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| bad(format!("{m:?} is not an HTTP method")))?
            }
            Some(_) => return Err(bad("method must be a string".into())),
        };
        let mut headers = Vec::new();
        match value.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, header) in map {
                    match header {
                        Value::String(text) => headers.push(HttpHeader {
                            name: name.clone(),
                            value: text.clone(),
                            secret: false,
                        }),
                        Value::Object(by_name) => {
                            let secret = by_name.get("secret").and_then(Value::as_str).ok_or_else(
                                || {
                                    bad(format!(
                                        "header {name:?} must be a string or {{secret: \"NAME\"}}"
                                    ))
                                },
                            )?;
                            let prefix = by_name
                                .get("prefix")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            let value = self.secret_value(secret)?;
                            headers.push(HttpHeader {
                                name: name.clone(),
                                value: format!("{prefix}{value}"),
                                secret: true,
                            });
                        }
                        _ => {
                            return Err(bad(format!(
                                "header {name:?} must be a string or {{secret: \"NAME\"}}"
                            )));
                        }
                    }
                }
            }
            Some(_) => return Err(bad("headers must be an object of name: value".into())),
        }
        let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
        let body = match (value.get("json"), value.get("body")) {
            (Some(json), _) if !json.is_null() => {
                if !has("content-type") {
                    headers.push(HttpHeader {
                        name: "content-type".into(),
                        value: "application/json".into(),
                        secret: false,
                    });
                }
                Some(json.to_string().into_bytes())
            }
            (_, None | Some(Value::Null)) => None,
            (_, Some(Value::String(text))) => Some(text.clone().into_bytes()),
            (_, Some(_)) => {
                return Err(bad(
                    "body must be a string (or give `json` for a JSON body)".into(),
                ));
            }
        };
        let timeout = match value.get("timeoutMs") {
            None | Some(Value::Null) => None,
            Some(ms) => Some(wait_of(Some(ms), "timeoutMs").map_err(bad)?),
        };
        Ok((
            HttpRequest {
                method,
                url,
                headers,
                body,
                grant: grant.clone(),
            },
            timeout,
        ))
    }

    /// Checks a `ctx.http.fetch` request and starts it on its own task, bounded by the call's
    /// deadline (and `timeoutMs`), after a slot of `[http] concurrency` is free.
    fn start_http(&self, call_id: u64, request: &str) -> Result<HostTask, SandboxError> {
        let Some(grant) = &self.grants.http else {
            return Err(denied("http", "ctx.http.fetch"));
        };
        let (request, timeout) = self.http_request(grant, request)?;
        let now = Instant::now();
        let allowed = self
            .grants
            .http_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(now);
        if !allowed {
            return Err(SandboxError::Http(format!(
                "{} reached its rate of {} requests per second ([http] per_second in klf.toml); \
                 retry later",
                self.function_id, grant.per_second
            )));
        }
        let mut meta = self.calls.meta_for(call_id);
        if let Some(timeout) = timeout {
            meta.deadline = meta.deadline.min(now + timeout);
        }
        let host = self.host.clone();
        let slots = self.grants.http_slots.clone();
        Ok(spawn_bounded(meta, move |meta| async move {
            let _slot = slots
                .acquire_owned()
                .await
                .map_err(|e| SandboxError::internal_failure("http slots", e))?;
            let response = host.http(request, meta).await?;
            Ok(response_json(response))
        }))
    }

    /// `ctx.sleep(ms)`: resolves after `ms`; one that would end after the call's deadline fails
    /// at once with `Timeout`.
    fn start_sleep(&self, call_id: u64, ms: f64) -> Result<HostTask, SandboxError> {
        let wait = wait_of(Some(&serde_json::Value::from(ms)), "ctx.sleep's delay")
            .map_err(SandboxError::Host)?;
        let meta = self.calls.meta_for(call_id);
        let now = Instant::now();
        if now + wait > meta.deadline {
            return Err(SandboxError::Timeout {
                after: meta.deadline.saturating_duration_since(now),
            });
        }
        Ok(spawn_bounded(meta, move |_| async move {
            tokio::time::sleep(wait).await;
            Ok(serde_json::Value::Null)
        }))
    }
}

fn wait_of(value: Option<&serde_json::Value>, what: &str) -> Result<Duration, String> {
    let ms = value
        .and_then(serde_json::Value::as_f64)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .ok_or_else(|| format!("{what} must be a non-negative number of milliseconds"))?;
    Duration::try_from_secs_f64(ms / 1000.0)
        .ok()
        .filter(|wait| *wait <= MAX_WAIT)
        .ok_or_else(|| format!("{what} of {ms} ms is longer than a day"))
}

/// `{status, ok, headers, body, json?, url}`: `json` when the answer says it is JSON and parses.
fn response_json(response: HttpResponse) -> serde_json::Value {
    let body = String::from_utf8_lossy(&response.body).into_owned();
    let is_json = response
        .headers
        .get("content-type")
        .is_some_and(|t| t.contains("json"));
    let mut out = serde_json::json!({
        "status": response.status,
        "ok": (200..300).contains(&response.status),
        "headers": response.headers,
        "url": response.url,
    });
    if is_json && let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) {
        out["json"] = json;
    }
    out["body"] = serde_json::Value::String(body);
    out
}

/// What a host request started from JavaScript resolves to.
type HostTask = JoinHandle<Result<serde_json::Value, SandboxError>>;

/// Runs a host request (`ctx.call`, `ctx.model`) on a task of its own, bounded by the deadline of
/// the call that made it: the request may outlive neither the call nor the instance's patience.
fn spawn_bounded<F, Fut>(meta: CallMeta, request: F) -> HostTask
where
    F: FnOnce(CallMeta) -> Fut + Send + 'static,
    Fut: Future<Output = Result<serde_json::Value, SandboxError>> + Send + 'static,
{
    let started = Instant::now();
    tokio::spawn(async move {
        let deadline = meta.deadline;
        if deadline <= started {
            return Err(timeout(deadline, started));
        }
        tokio::time::timeout_at(deadline.into(), request(meta))
            .await
            .unwrap_or_else(|_| Err(timeout(deadline, started)))
    })
}

/// The [`Reply`] of a host request once its task ends (or why it never started).
async fn settle(
    state: Arc<EngineState>,
    what: &'static str,
    started: Result<HostTask, SandboxError>,
) -> Reply {
    let outcome = match started {
        Ok(task) => task.await.unwrap_or_else(|e| {
            Err(SandboxError::Internal(format!(
                "the {what}'s task failed: {e}"
            )))
        }),
        Err(error) => Err(error),
    };
    match outcome {
        Ok(value) => Reply::Value(Some(value.to_string())),
        Err(error) => state.errors.reply(error),
    }
}

/// A promise resolved with `reply` when it arrives.
///
/// Not `Promise::wrap_future`: it prints to stdout when resolving fails, which it does when the
/// answer arrives after the call ended (the interrupt handler refuses the job).
fn promise_of<'js>(
    ctx: &Ctx<'js>,
    reply: impl Future<Output = Reply> + 'js,
) -> rquickjs::Result<rquickjs::Promise<'js>> {
    let (promise, resolve, _reject) = ctx.promise()?;
    let job_ctx = ctx.clone();
    ctx.spawn(async move {
        let settled = reply
            .await
            .into_js(&job_ctx)
            .and_then(|value| resolve.call::<_, ()>((value,)));
        if settled.is_err() {
            clear_exception(&job_ctx);
        }
    });
    Ok(promise)
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Installs the natives `klf:base` picks up.
pub(super) fn install_natives<'js>(
    ctx: &Ctx<'js>,
    state: &Arc<EngineState>,
) -> rquickjs::Result<()> {
    let natives = Object::new(ctx.clone())?;
    natives.set("secret", state.secret.as_str())?;

    let s = state.clone();
    let call = move |ctx: Ctx<'js>, call_id: f64, target: String, input: String| {
        let started = s.start_call(call_id as u64, target, &input);
        promise_of(&ctx, settle(s.clone(), "host call", started))
    };
    natives.set("call", Function::new(ctx.clone(), call)?)?;
    let s = state.clone();
    let model = move |ctx: Ctx<'js>, call_id: f64, request: String| {
        let started = s.start_model(call_id as u64, &request);
        promise_of(&ctx, settle(s.clone(), "model call", started))
    };
    natives.set("model", Function::new(ctx.clone(), model)?)?;
    let s = state.clone();
    let http = move |ctx: Ctx<'js>, call_id: f64, request: String| {
        let started = s.start_http(call_id as u64, &request);
        promise_of(&ctx, settle(s.clone(), "HTTP request", started))
    };
    natives.set("http", Function::new(ctx.clone(), http)?)?;
    let s = state.clone();
    let sleep = move |ctx: Ctx<'js>, call_id: f64, ms: f64| {
        let started = s.start_sleep(call_id as u64, ms);
        promise_of(&ctx, settle(s.clone(), "sleep", started))
    };
    natives.set("sleep", Function::new(ctx.clone(), sleep)?)?;
    let s = state.clone();
    natives.set(
        "crypto",
        Function::new(ctx.clone(), move |op: String, args: String| {
            s.crypto(&op, &args)
        })?,
    )?;
    let s = state.clone();
    natives.set(
        "secretValue",
        Function::new(ctx.clone(), move |name: String| s.secret(&name))?,
    )?;
    let s = state.clone();
    natives.set(
        "schedule",
        Function::new(ctx.clone(), move |op: String, args: String| {
            s.schedule(&op, &args)
        })?,
    )?;
    let s = state.clone();
    natives.set(
        "kvGet",
        Function::new(ctx.clone(), move |key: String| s.kv_get(&key))?,
    )?;
    let s = state.clone();
    natives.set(
        "kvPut",
        Function::new(ctx.clone(), move |key: String, value: String| {
            s.kv_put(&key, &value)
        })?,
    )?;
    let s = state.clone();
    natives.set(
        "kvDelete",
        Function::new(ctx.clone(), move |key: String| s.kv_delete(&key))?,
    )?;
    let s = state.clone();
    natives.set(
        "kvList",
        Function::new(ctx.clone(), move |prefix: String| s.kv_list(&prefix))?,
    )?;
    let s = state.clone();
    natives.set(
        "log",
        Function::new(ctx.clone(), move |level: String, message: String| {
            s.log(&level, &message)
        })?,
    )?;
    let s = state.clone();
    natives.set(
        "warn",
        Function::new(ctx.clone(), move |message: String| {
            warn!(function = %s.function_id, "{}", truncate(&message, MAX_LOG_BYTES));
        })?,
    )?;
    natives.set(
        "now",
        Function::new(ctx.clone(), || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |elapsed| elapsed.as_secs_f64() * 1000.0)
                .floor()
        })?,
    )?;
    ctx.globals().set(HOST_GLOBAL, natives)
}
