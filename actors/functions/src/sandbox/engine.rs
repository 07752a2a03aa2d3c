//! One QuickJS runtime and context running one function: built by [`Engine::start`], driven one
//! operation at a time by [`Engine::run`], which also turns what the JavaScript did into a typed
//! result. [`super::Instance`] owns the current engine and replaces it when it is poisoned; the
//! host capabilities the JavaScript reaches live in `natives.rs`.
//!
//! Every JavaScript value lives inside `AsyncContext::async_with` closures, and those closures
//! always run to completion in a task of their own (see `Instance`): dropping one half-way would
//! free JavaScript values without the runtime's lock while other calls use the runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rquickjs::context::intrinsic;
use rquickjs::{
    AsyncContext, AsyncRuntime, Ctx, Exception, Function, Module, Object, Promise, Value,
};
use tokio::task::JoinHandle;

use super::allocator::{Meter, MeteredAllocator};
use super::calls::Calls;
use super::compile::{self, RefusedImports};
use super::natives::{Grants, HostErrors, install_natives};
use super::{CallMeta, FunctionCode, Host, SandboxError, SandboxLimits};

/// What the function's context can do: everything a computation needs, no `Eval` (so no `eval`
/// or `Function`), no `Performance` (no high-resolution clock). `Date` stays: it reads the same
/// wall clock `ctx.now()` does, and functions need it to handle dates.
type Intrinsics = (
    intrinsic::Date,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
    intrinsic::WeakRef,
);

/// Global through which `klf:base` exposes its runner (it checks `EngineState::secret`).
const RUNNER_GLOBAL: &str = "__klf_runner__";

/// Everything needed to build an engine, kept for rebuilding one.
pub(super) struct Blueprint {
    pub(super) code: FunctionCode,
    pub(super) limits: SandboxLimits,
    pub(super) host: Arc<dyn Host>,
    /// The function's module as bytecode, once compiled.
    pub(super) bytecode: OnceLock<Arc<[u8]>>,
}

/// An operation on the instance.
pub(super) enum Op {
    /// One call, with its input as JSON text.
    Execute(String),
    Validate,
    Test,
}

pub(super) struct Engine {
    context: AsyncContext,
    _runtime: AsyncRuntime,
    state: Arc<EngineState>,
    driver: JoinHandle<()>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The driver would otherwise stay parked forever once the runtime is gone.
        self.driver.abort();
    }
}

/// What the natives and the host side of every call share.
pub(super) struct EngineState {
    pub(super) function_id: String,
    pub(super) limits: SandboxLimits,
    pub(super) host: Arc<dyn Host>,
    pub(super) grants: Grants,
    pub(super) calls: Arc<Calls>,
    pub(super) meter: Arc<Meter>,
    pub(super) errors: HostErrors,
    /// Token `klf:base` demands from whoever drives its runner, so the function cannot.
    pub(super) secret: String,
    pub(super) refused: RefusedImports,
}

impl Engine {
    /// Builds the runtime, compiles (or reuses) the module, loads `klf:base` and the module,
    /// constructs the default export and runs `initialize()`, all within `limits.timeout`.
    pub(super) async fn start(blueprint: Arc<Blueprint>) -> Result<Arc<Engine>, SandboxError> {
        let started = Instant::now();
        let limits = blueprint.limits;
        let deadline = started + limits.timeout;
        let out_of_memory = SandboxError::OutOfMemory {
            limit_bytes: limits.memory_bytes,
        };
        let meter = Meter::new(limits.memory_bytes);
        let runtime = AsyncRuntime::new_with_alloc(MeteredAllocator(meter.clone()))
            .map_err(|_| out_of_memory.clone())?;
        let calls = Calls::new();
        // Starting is a call of its own: until it is registered, the interrupt handler would stop
        // any JavaScript (even the getter of an error's `stack`).
        let starting = calls.register(CallMeta {
            deadline,
            call_depth: 0,
            trace_parent: None,
        });
        let interrupt_calls = calls.clone();
        runtime
            .set_interrupt_handler(Some(Box::new(move || interrupt_calls.should_interrupt())))
            .await;
        let parts = compile::Parts::needed_by(&blueprint.code.source);
        let refused = compile::install_loader(&runtime, parts).await;
        // Without a driver, calls that await host promises concurrently can hang.
        let driver = tokio::spawn(runtime.drive());

        let bytecode = match blueprint.bytecode.get() {
            Some(bytecode) => bytecode.clone(),
            None => {
                // Imports are resolved when the module is compiled.
                let compiled = compile::compile_module(
                    &runtime,
                    &blueprint.code.entry,
                    &blueprint.code.source,
                )
                .await
                .map_err(|error| match error {
                    _ if meter.refusals() > 0 => out_of_memory.clone(),
                    other => refused_import(&refused).unwrap_or(other),
                });
                match compiled {
                    Ok(compiled) => blueprint.bytecode.get_or_init(|| compiled.into()).clone(),
                    Err(error) => {
                        driver.abort();
                        return Err(error);
                    }
                }
            }
        };
        let context = match AsyncContext::custom::<Intrinsics>(&runtime).await {
            Ok(context) => context,
            Err(_) => {
                driver.abort();
                return Err(out_of_memory);
            }
        };

        let state = Arc::new(EngineState {
            function_id: blueprint.code.id(),
            limits,
            host: blueprint.host.clone(),
            grants: Grants::new(&blueprint.code),
            calls,
            meter,
            errors: HostErrors::default(),
            secret: secret(),
            refused,
        });
        let engine = Arc::new(Engine {
            context,
            _runtime: runtime,
            state: state.clone(),
            driver,
        });

        let identity = serde_json::json!({
            "name": blueprint.code.name,
            "version": blueprint.code.version,
            "type": blueprint.code.kind,
            "config": blueprint.code.config,
            "dependencies": blueprint.code.dependencies,
        })
        .to_string();
        let entry = blueprint.code.entry.clone();
        engine
            .context
            .async_with(async move |ctx| {
                clear_exception(&ctx);
                let refusals = state.meter.refusals();
                let base = (parts, bytecode.as_ref());
                let result = boot(&ctx, &state, &entry, base, &identity, deadline).await;
                clear_exception(&ctx);
                verdict(
                    &state,
                    result.map(|()| serde_json::Value::Null),
                    refusals,
                    deadline,
                    started,
                )
            })
            .await?;
        drop(starting);
        Ok(engine)
    }

    /// Runs one operation to completion; `meta.deadline` is already the effective deadline.
    pub(super) async fn run(
        self: Arc<Self>,
        op: Op,
        meta: CallMeta,
        started: Instant,
    ) -> Result<serde_json::Value, SandboxError> {
        let state = self.state.clone();
        let deadline = meta.deadline;
        self.context
            .async_with(async move |ctx| {
                clear_exception(&ctx);
                let refusals = state.meter.refusals();
                let guard = state.calls.register(meta);
                let result = invoke(&ctx, &state, guard.id(), &op, deadline, started).await;
                drop(guard);
                clear_exception(&ctx);
                verdict(&state, result, refusals, deadline, started)
            })
            .await
    }

    /// True once the engine ran out of memory (in a call, or in work a call left behind): it must
    /// not serve another call.
    pub(super) fn is_poisoned(&self) -> bool {
        self.state.meter.refusals() > 0
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.state.meter.used()
    }
}

/// Drops an exception left pending in the context. An interrupted promise job leaves its
/// (uncatchable) exception pending, and rquickjs's promise futures fail on any pending uncatchable
/// exception, whoever it belonged to.
pub(super) fn clear_exception(ctx: &Ctx<'_>) {
    if ctx.has_exception() {
        let _ = ctx.catch();
    }
}

/// The final word on an operation, whatever the JavaScript made of it: a memory limit hit during
/// the call wins, then a passed deadline.
fn verdict(
    state: &EngineState,
    result: Result<serde_json::Value, SandboxError>,
    refusals_before: u64,
    deadline: Instant,
    started: Instant,
) -> Result<serde_json::Value, SandboxError> {
    if state.meter.refusals() != refusals_before {
        return Err(SandboxError::OutOfMemory {
            limit_bytes: state.meter.limit(),
        });
    }
    if Instant::now() >= deadline {
        return Err(timeout(deadline, started));
    }
    result
}

pub(super) fn timeout(deadline: Instant, started: Instant) -> SandboxError {
    SandboxError::Timeout {
        after: deadline.saturating_duration_since(started),
    }
}

/// Loads `klf:base` (with the library parts the function needs) and the function's module, and
/// boots the default export.
async fn boot<'js>(
    ctx: &Ctx<'js>,
    state: &Arc<EngineState>,
    entry: &str,
    (parts, bytecode): (compile::Parts, &[u8]),
    identity: &str,
    deadline: Instant,
) -> Result<(), SandboxError> {
    let fail = |error: rquickjs::Error| classify(ctx, state, error);
    install_natives(ctx, state).map_err(fail)?;

    let base = compile::base_bytecode(parts)?;
    // SAFETY: both bytecodes were written by this build of QuickJS: `klf:base` from our source,
    // the function's module by `compile_module`.
    let (_, base_done) = unsafe { Module::load(ctx.clone(), base) }
        .and_then(|module| module.eval())
        .map_err(fail)?;
    settle(ctx, state, base_done, deadline).await?;

    let loaded = unsafe { Module::load(ctx.clone(), bytecode) }.and_then(|module| module.eval());
    let (module, done) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return Err(refused_import(&state.refused).unwrap_or_else(|| fail(error))),
    };
    if let Err(error) = settle(ctx, state, done, deadline).await {
        return Err(refused_import(&state.refused).unwrap_or(error));
    }

    let namespace = module.namespace().map_err(fail)?;
    let export: Value = namespace.get("default").map_err(fail)?;
    if export.is_undefined() {
        return Err(SandboxError::BadModule(format!(
            "{entry} has no default export; export default a class extending BaseFunction \
             from \"klf:base\""
        )));
    }
    let runner: Object = ctx.globals().get(RUNNER_GLOBAL).map_err(fail)?;
    let boot: Function = runner.get("boot").map_err(fail)?;
    let identity = ctx.json_parse(identity).map_err(fail)?;
    let booted: Promise = boot
        .call((state.secret.as_str(), export, identity))
        .map_err(fail)?;
    let reason = settle(ctx, state, booted, deadline).await?;
    match reason.as_string() {
        Some(reason) => Err(SandboxError::BadModule(format!(
            "{entry}: {}",
            reason.to_string().map_err(fail)?
        ))),
        None => Ok(()),
    }
}

/// Awaits a promise until `deadline`.
async fn settle<'js>(
    ctx: &Ctx<'js>,
    state: &EngineState,
    promise: Promise<'js>,
    deadline: Instant,
) -> Result<Value<'js>, SandboxError> {
    match tokio::time::timeout_at(deadline.into(), promise.into_future::<Value>()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(classify(ctx, state, error)),
        Err(_) => Err(SandboxError::Timeout {
            after: Duration::ZERO,
        }),
    }
}

pub(super) fn refused_import(refused: &RefusedImports) -> Option<SandboxError> {
    let refused = refused.lock().ok()?.last()?.clone();
    Some(SandboxError::BadModule(format!(
        "import of \"{refused}\" is not allowed: functions may import only \"{}\"",
        compile::BASE_MODULE
    )))
}

/// One operation through `klf:base`'s runner.
async fn invoke<'js>(
    ctx: &Ctx<'js>,
    state: &EngineState,
    call_id: u64,
    op: &Op,
    deadline: Instant,
    started: Instant,
) -> Result<serde_json::Value, SandboxError> {
    let fail = |error: rquickjs::Error| classify(ctx, state, error);
    let runner: Object = ctx.globals().get(RUNNER_GLOBAL).map_err(fail)?;
    let secret = state.secret.as_str();
    // Ids stay far below 2^53, so they survive the trip through a JavaScript number.
    let id = call_id as f64;
    let promise: Promise = match op {
        Op::Execute(input) => {
            let input = ctx.json_parse(input.as_str()).map_err(fail)?;
            let run: Function = runner.get("run").map_err(fail)?;
            run.call((secret, id, input))
        }
        Op::Validate => runner
            .get::<_, Function>("validate")
            .and_then(|validate| validate.call((secret,))),
        Op::Test => runner
            .get::<_, Function>("test")
            .and_then(|test| test.call((secret, id))),
    }
    .map_err(fail)?;
    let value = settle(ctx, state, promise, deadline)
        .await
        .map_err(|error| match error {
            SandboxError::Timeout { .. } => timeout(deadline, started),
            other => other,
        })?;
    match op {
        Op::Validate => value.as_bool().map(serde_json::Value::Bool).ok_or_else(|| {
            SandboxError::BadOutput(format!(
                "validate() must resolve to a boolean, not {}",
                value.type_name()
            ))
        }),
        Op::Execute(_) | Op::Test => output(ctx, state, value),
    }
}

/// The result as JSON, within `max_output_bytes`.
fn output<'js>(
    ctx: &Ctx<'js>,
    state: &EngineState,
    value: Value<'js>,
) -> Result<serde_json::Value, SandboxError> {
    let not_json = |what: &str| {
        SandboxError::BadOutput(format!(
            "the function returned {what}, which is not JSON; return null, a boolean, a number, \
             a string, an array or a plain object"
        ))
    };
    if value.is_undefined() {
        return Err(not_json("undefined"));
    }
    if value.is_function() {
        return Err(not_json("a function"));
    }
    let text = match ctx.json_stringify(value) {
        Ok(Some(text)) => text
            .to_string()
            .map_err(|e| output_failure("the result is not text", e))?,
        Ok(None) => return Err(not_json("a value JSON cannot represent (a symbol?)")),
        Err(rquickjs::Error::Exception) => {
            let reason = describe_thrown(&ctx.catch());
            return Err(SandboxError::BadOutput(format!(
                "the result cannot be turned into JSON: {reason}"
            )));
        }
        Err(other) => return Err(SandboxError::internal_failure("JSON.stringify", other)),
    };
    let limit = state.limits.max_output_bytes;
    if text.len() > limit {
        return Err(SandboxError::BadOutput(format!(
            "the result is {} bytes of JSON, over the limit of {limit} bytes",
            text.len()
        )));
    }
    serde_json::from_str(&text).map_err(|e| output_failure("the result cannot be read back", e))
}

fn output_failure(
    what: &str,
    cause: impl std::error::Error + Send + Sync + 'static,
) -> SandboxError {
    SandboxError::OutputFailure {
        what: what.to_string(),
        cause: super::Cause::new(cause),
    }
}

/// Turns a failure inside JavaScript into a typed error. `Timeout` and `OutOfMemory` verdicts
/// are made by [`verdict`]; this only recognises what the exception itself says.
fn classify(ctx: &Ctx<'_>, state: &EngineState, error: rquickjs::Error) -> SandboxError {
    if !matches!(error, rquickjs::Error::Exception) {
        return SandboxError::internal_failure("running the function", error);
    }
    let thrown = ctx.catch();
    if thrown.is_uncatchable_error() {
        // The interrupt handler fired: no call had time left.
        return SandboxError::Timeout {
            after: Duration::ZERO,
        };
    }
    if let Some(object) = thrown.as_object() {
        if let Ok(Some(id)) = object.get::<_, Option<f64>>("klfErrorId")
            && let Some(error) = state.errors.get(id as u64)
        {
            return error;
        }
        if let Some(exception) = Exception::from_object(object.clone()) {
            let message = exception.message().unwrap_or_default();
            let name: Option<String> = object.get("name").ok();
            if name.as_deref() == Some("InternalError") && message == "out of memory" {
                return SandboxError::OutOfMemory {
                    limit_bytes: state.meter.limit(),
                };
            }
            let message = match name {
                Some(name) if !name.is_empty() && name != "Error" => format!("{name}: {message}"),
                _ => message,
            };
            return SandboxError::User {
                message,
                stack: exception.stack().filter(|stack| !stack.is_empty()),
            };
        }
    }
    SandboxError::User {
        message: describe_thrown(&thrown),
        stack: None,
    }
}

/// A thrown value as text: an error's message, a string as is, anything else as JSON if it can be.
fn describe_thrown(value: &Value<'_>) -> String {
    if let Some(exception) = value
        .as_object()
        .and_then(|o| Exception::from_object(o.clone()))
    {
        return exception.message().unwrap_or_default();
    }
    if let Some(text) = value.as_string().and_then(|s| s.to_string().ok()) {
        return text;
    }
    match value.ctx().json_stringify(value.clone()) {
        Ok(Some(text)) => text.to_string().unwrap_or_default(),
        _ => {
            // The stringify may have thrown; leave no pending exception behind.
            if value.ctx().has_exception() {
                let _ = value.ctx().catch();
            }
            format!("a thrown {}", value.type_name())
        }
    }
}

/// A random token for the runner (not a cryptographic secret: it only keeps the function from
/// driving its own runner by accident or design).
fn secret() -> String {
    use std::hash::BuildHasher;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = std::collections::hash_map::RandomState::new().hash_one(n);
    let b = std::collections::hash_map::RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}
