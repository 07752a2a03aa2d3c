//! The natives: the host capabilities as `klf:base` reaches them (`ctx.call`, `ctx.kv`,
//! `ctx.log`, `ctx.now`), each checked here against what the manifest grants.
//!
//! A native never throws for a refused or failed request: it answers `{id, kind, message}`, which
//! `klf:base` throws as a `HostError`. The error itself stays here under that id, so that if it
//! propagates out of the function unchanged the caller gets it typed (`CapabilityDenied`,
//! `Host`, `Timeout`), not as a generic `User` error.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rquickjs::{Ctx, Function, IntoJs, Object, Value};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::engine::{EngineState, clear_exception, timeout};
use super::{FunctionCode, LogLevel, SandboxError};

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
    dependencies: HashSet<String>,
}

impl Grants {
    pub(super) fn new(code: &FunctionCode) -> Self {
        let granted = |name: &str| code.capabilities.iter().any(|c| c == name);
        for capability in &code.capabilities {
            if !matches!(
                capability.as_str(),
                "call" | "kv" | "log" | "now" | "config"
            ) {
                debug!(function = %code.id(), capability, "no such capability in this sandbox");
            }
        }
        Self {
            call: granted("call"),
            kv: granted("kv"),
            log: granted("log"),
            dependencies: code.dependencies.iter().cloned().collect(),
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
    ) -> Result<JoinHandle<Result<serde_json::Value, SandboxError>>, SandboxError> {
        if !self.grants.call {
            return Err(denied("call", "ctx.call"));
        }
        let name = target.split('@').next().unwrap_or_default();
        if !self.grants.dependencies.contains(name) {
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
            return Err(SandboxError::CapabilityDenied {
                capability: "call".to_string(),
                detail: format!(
                    "\"{name}\" is not a declared dependency of {}; declare it under \
                     [dependencies] in klf.toml (declared: {declared})",
                    self.function_id
                ),
            });
        }
        let input: serde_json::Value = serde_json::from_str(input)
            .map_err(|e| SandboxError::Internal(format!("ctx.call input: {e}")))?;
        let meta = self.calls.meta_for(call_id);
        let host = self.host.clone();
        let started = Instant::now();
        Ok(tokio::spawn(async move {
            let deadline = meta.deadline;
            if deadline <= started {
                return Err(timeout(deadline, started));
            }
            tokio::time::timeout_at(deadline.into(), host.call(target, input, meta))
                .await
                .unwrap_or_else(|_| Err(timeout(deadline, started)))
        }))
    }
}

fn host_call(
    state: Arc<EngineState>,
    call_id: f64,
    target: String,
    input: String,
) -> impl Future<Output = Reply> {
    let started = state.start_call(call_id as u64, target, &input);
    async move {
        let outcome = match started {
            Ok(task) => task.await.unwrap_or_else(|e| {
                Err(SandboxError::Internal(format!(
                    "the host call's task failed: {e}"
                )))
            }),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(value) => Reply::Value(Some(value.to_string())),
            Err(error) => state.errors.reply(error),
        }
    }
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
        // Not `Promise::wrap_future`: it prints to stdout when resolving fails, which it does
        // when the answer arrives after the call ended (the interrupt handler refuses the job).
        let (promise, resolve, _reject) = ctx.promise()?;
        let reply = host_call(s.clone(), call_id, target, input);
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
        rquickjs::Result::Ok(promise)
    };
    natives.set("call", Function::new(ctx.clone(), call)?)?;
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
