//! The function instances running on this node, and how they start, serve and drain.
//!
//! One entry per function name: the release it runs, its [`InstanceActor`] and a semaphore of the
//! manifest's `concurrency` permits (callers beyond it get `Overloaded` at once instead of a queue).
//! Starting is single-flight per name, so a burst of first calls starts one instance. A replaced or
//! no longer placed instance leaves the map first (new calls go elsewhere), then stops once its
//! in-flight calls are done.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use klf_functions::package::{Manifest, Package};
use klf_functions::sandbox::{
    CallMeta, FunctionCode, Host, Instance, InstanceActor, InstanceMsg, SandboxError, SandboxLimits,
};
use klf_registry::Release;

/// Longest time a draining instance gets to finish its calls.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON output of one call.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Makes the [`Host`] an instance of `release` talks to (given by the layer above: the router).
pub type HostFactory = Arc<dyn Fn(&Release) -> Arc<dyn Host> + Send + Sync>;

/// How the router runs a call on a hosted instance without a mailbox hop (the actor still owns the
/// instance's lifecycle; both hold the same `Arc`).
#[derive(Clone)]
pub enum Executor {
    Js(Arc<Instance>),
    Native(Arc<dyn klf_functions::native::BaseFunction>),
}

impl Executor {
    /// Runs one call.
    pub async fn execute(
        &self,
        input: serde_json::Value,
        meta: CallMeta,
    ) -> Result<serde_json::Value, SandboxError> {
        match self {
            Self::Js(instance) => instance.execute(input, meta).await,
            Self::Native(function) => function.execute(input),
        }
    }
}

/// One running instance.
pub struct Hosted {
    pub release: Release,
    pub actor: ActorRef<InstanceMsg>,
    pub executor: Executor,
    pub permits: Arc<Semaphore>,
    pub concurrency: usize,
    pub started_at: Instant,
    /// How long `start` took (compile, construct, `onInitialize`).
    pub cold_start: Duration,
}

impl Hosted {
    /// `name@version` this instance runs.
    pub fn id(&self) -> String {
        self.release.manifest.id()
    }
}

/// The code a sandbox runs for a package with this manifest.
pub fn function_code(m: &Manifest, source: &str) -> FunctionCode {
    FunctionCode {
        name: m.name.clone(),
        version: m.version.to_string(),
        kind: m.kind.clone(),
        entry: m.entry.clone(),
        source: source.to_string(),
        config: m.config.clone(),
        dependencies: m.dependencies.keys().cloned().collect(),
        capabilities: m.capabilities.clone(),
        secrets: m.secrets.clone(),
        http: m.http.clone(),
    }
}

/// The sandbox limits a manifest asks for.
pub fn sandbox_limits(manifest: &Manifest) -> SandboxLimits {
    let l = manifest.limits;
    SandboxLimits {
        memory_bytes: (l.memory_mb as usize).saturating_mul(1024 * 1024),
        timeout: Duration::from_millis(l.timeout_ms),
        max_output_bytes: MAX_OUTPUT_BYTES,
    }
}

/// The instances of this node.
pub struct Instances {
    running: RwLock<HashMap<String, Arc<Hosted>>>,
    starting: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    host_factory: HostFactory,
    /// Bumped whenever an instance starts or leaves the table, for whoever waits on one.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Instances {
    pub fn new(host_factory: HostFactory) -> Self {
        Self {
            running: RwLock::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(HashMap::new()),
            host_factory,
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Fires whenever an instance starts, is replaced or leaves this node.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A host for an instance of `release` that is not kept in this table (a throwaway instance,
    /// such as one that runs a function's tests).
    pub fn host_for(&self, release: &Release) -> Arc<dyn Host> {
        (self.host_factory)(release)
    }

    /// The running instance of `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<Hosted>> {
        self.running.read().ok()?.get(name).cloned()
    }

    /// Names and ids of everything running.
    pub fn running(&self) -> Vec<Arc<Hosted>> {
        self.running
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The instance of `release`, starting it (once, however many ask at the same time) from
    /// `package` if it is not running yet. An instance of another version of the same function is
    /// replaced and drained.
    pub async fn get_or_start(
        &self,
        release: &Release,
        package: &Package,
    ) -> Result<Arc<Hosted>, SandboxError> {
        let name = release.manifest.name.clone();
        if let Some(hosted) = self
            .get(&name)
            .filter(|h| h.release.artifact == release.artifact)
        {
            return Ok(hosted);
        }
        let gate = {
            let mut starting = self.starting.lock().await;
            starting.entry(name.clone()).or_default().clone()
        };
        let _guard = gate.lock().await;
        if let Some(hosted) = self
            .get(&name)
            .filter(|h| h.release.artifact == release.artifact)
        {
            return Ok(hosted);
        }
        let began = Instant::now();
        let (spawned, executor) = match klf_functions::native::builtin(&release.manifest.entry) {
            Some(function) => (
                Actor::spawn(None, klf_functions::native::NativeActor, function.clone()).await,
                Executor::Native(function),
            ),
            None => {
                let instance = Arc::new(
                    Instance::start(
                        function_code(&package.manifest, &package.source),
                        sandbox_limits(&release.manifest),
                        (self.host_factory)(release),
                    )
                    .await?,
                );
                (
                    Actor::spawn(None, InstanceActor, instance.clone()).await,
                    Executor::Js(instance),
                )
            }
        };
        let (actor, _) =
            spawned.map_err(|e| SandboxError::internal_failure("instance actor", e))?;
        let concurrency = release.manifest.limits.concurrency as usize;
        let hosted = Arc::new(Hosted {
            release: release.clone(),
            actor,
            executor,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            started_at: Instant::now(),
            cold_start: began.elapsed(),
        });
        info!(id = %hosted.id(), cold_start = ?hosted.cold_start, "instance started");
        let previous = self
            .running
            .write()
            .map_err(|_| SandboxError::Internal("instance table poisoned".into()))?
            .insert(name, hosted.clone());
        if let Some(previous) = previous {
            drain(previous);
        }
        self.changed();
        Ok(hosted)
    }

    /// Stops serving `name` here: new calls go elsewhere, in-flight ones finish, then it stops.
    pub fn retire(&self, name: &str) {
        let removed = self.running.write().ok().and_then(|mut m| m.remove(name));
        if let Some(hosted) = removed {
            drain(hosted);
            self.changed();
        }
    }

    /// Stops every instance at once (node shutdown).
    pub fn stop_all(&self) {
        let all: Vec<Arc<Hosted>> = self
            .running
            .write()
            .map(|mut m| m.drain().map(|(_, h)| h).collect())
            .unwrap_or_default();
        for hosted in all {
            hosted.actor.stop(None);
        }
    }
}

/// Waits for the instance's in-flight calls (all permits back), then stops its actor.
fn drain(hosted: Arc<Hosted>) {
    tokio::spawn(async move {
        let all = u32::try_from(hosted.concurrency).unwrap_or(u32::MAX);
        match tokio::time::timeout(DRAIN_TIMEOUT, hosted.permits.acquire_many(all)).await {
            Ok(_) => debug!(id = %hosted.id(), "instance drained"),
            Err(_) => {
                warn!(id = %hosted.id(), "instance still busy after {DRAIN_TIMEOUT:?}; stopping it")
            }
        }
        hosted.actor.stop(None);
        info!(id = %hosted.id(), "instance stopped");
    });
}
