//! [`Instance`]: one function instance as the node sees it — start it once, call it concurrently.
//!
//! Each operation runs on a task of its own and the caller awaits that task with the call's
//! deadline. Two reasons: the JavaScript side of a call must never be dropped half-way (see
//! [`super::engine`]), so a caller that gives up (or is cancelled) only stops waiting; and a caller
//! gets its `Timeout` at its deadline even while another call's CPU loop holds the runtime.
//!
//! An engine that ran out of memory is poisoned; the next operation builds a fresh one from the
//! same blueprint (reusing the compiled bytecode) and `onInitialize` runs again. Calls still in
//! flight on the old engine finish there.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::info;

use super::engine::{Blueprint, Engine, Op};
use super::{CallMeta, FunctionCode, Host, SandboxError, SandboxLimits};

/// How long past its deadline a caller waits for the call's own verdict before it answers
/// `Timeout` itself (the call's task normally answers at the deadline).
const VERDICT_GRACE: Duration = Duration::from_millis(2);

/// One function instance: its own QuickJS runtime and context, the module loaded, `initialize()`
/// done. Cheap to share (`Arc<Instance>`); every method takes `&self` and calls may overlap.
pub struct Instance {
    blueprint: Arc<Blueprint>,
    engine: RwLock<Arc<Engine>>,
    rebuild: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("function", &self.blueprint.code.id())
            .field("limits", &self.blueprint.limits)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Compiles the module, constructs the default export and runs `initialize()` (which runs
    /// `onInitialize` once), within `limits.timeout`.
    pub async fn start(
        code: FunctionCode,
        limits: SandboxLimits,
        host: Arc<dyn Host>,
    ) -> Result<Self, SandboxError> {
        let blueprint = Arc::new(Blueprint {
            code,
            limits,
            host,
            bytecode: Default::default(),
        });
        let engine = start_engine(blueprint.clone()).await?;
        Ok(Self {
            blueprint,
            engine: RwLock::new(engine),
            rebuild: tokio::sync::Mutex::new(()),
        })
    }

    /// One call: `onExecute(input)`, then `execute(input)`, through `klf:base`. The deadline is
    /// the earlier of `meta.deadline` and now + `limits.timeout`.
    pub async fn execute(
        &self,
        input: serde_json::Value,
        meta: CallMeta,
    ) -> Result<serde_json::Value, SandboxError> {
        let input = input.to_string();
        self.dispatch(Op::Execute(input), meta).await
    }

    /// The function's `validate()`.
    pub async fn validate(&self) -> Result<bool, SandboxError> {
        let meta = CallMeta::with_timeout(self.blueprint.limits.timeout);
        match self.dispatch(Op::Validate, meta).await? {
            serde_json::Value::Bool(valid) => Ok(valid),
            other => Err(SandboxError::Internal(format!(
                "validate() produced {other} instead of a boolean"
            ))),
        }
    }

    /// The function's `test()`: `{passed, failed, results: [{name, passed, expected?, actual?,
    /// error?}]}` from the class's `static tests` (see `klf:base`).
    pub async fn test(&self) -> Result<serde_json::Value, SandboxError> {
        let meta = CallMeta::with_timeout(self.blueprint.limits.timeout);
        self.dispatch(Op::Test, meta).await
    }

    /// Bytes the JavaScript heap holds now (allocator overhead included).
    pub fn heap_bytes(&self) -> usize {
        self.current().heap_bytes()
    }

    /// `name@version` of the function.
    pub fn function_id(&self) -> String {
        self.blueprint.code.id()
    }

    fn current(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The engine to run on, rebuilt first if the current one ran out of memory.
    async fn engine(&self) -> Result<Arc<Engine>, SandboxError> {
        let current = self.current();
        if !current.is_poisoned() {
            return Ok(current);
        }
        let _rebuilding = self.rebuild.lock().await;
        let current = self.current();
        if !current.is_poisoned() {
            return Ok(current);
        }
        info!(
            function = %self.blueprint.code.id(),
            "replacing the instance's runtime after it ran out of memory"
        );
        let fresh = start_engine(self.blueprint.clone()).await?;
        *self
            .engine
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    async fn dispatch(&self, op: Op, meta: CallMeta) -> Result<serde_json::Value, SandboxError> {
        let started = Instant::now();
        let deadline = meta.deadline.min(started + self.blueprint.limits.timeout);
        if deadline <= started {
            return Err(SandboxError::Timeout {
                after: Duration::ZERO,
            });
        }
        let engine = self.engine().await?;
        let meta = CallMeta { deadline, ..meta };
        let task = tokio::spawn(engine.run(op, meta, started));
        match tokio::time::timeout_at((deadline + VERDICT_GRACE).into(), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(failed)) => Err(SandboxError::internal_failure(
                "the call's task failed",
                failed,
            )),
            Err(_) => Err(SandboxError::Timeout {
                after: deadline.saturating_duration_since(started),
            }),
        }
    }
}

/// Builds an engine on a task of its own (never dropped half-way, like a call).
async fn start_engine(blueprint: Arc<Blueprint>) -> Result<Arc<Engine>, SandboxError> {
    tokio::spawn(Engine::start(blueprint))
        .await
        .unwrap_or_else(|failed| {
            Err(SandboxError::internal_failure(
                "starting the instance failed",
                failed,
            ))
        })
}
