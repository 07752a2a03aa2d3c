//! What a function instance's `ctx` reaches: the [`Host`] the sandbox defines, implemented here,
//! above it, by the router (calls), the store (kv) and tracing (log).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use tracing::{debug, error, info, warn};

use super::{InvokeRequest, Router, RouterInner};
use crate::functions::sandbox::{CallMeta, Host, HostCallFuture, LogLevel, SandboxError};
use crate::registry::Release;
use crate::store::Store;

/// Keys a function may list at once.
const MAX_KV_LIST: usize = 1000;

/// The host of one instance: it knows which function it serves, so `kv` is that function's own
/// namespace and `call` applies the ranges its manifest declares.
pub struct NodeHost {
    router: Weak<RouterInner>,
    function: String,
    dependencies: BTreeMap<String, semver::VersionReq>,
    /// Weak: the store belongs to the node; an instance outliving it gets an error, not the file.
    store: Weak<Store>,
}

impl NodeHost {
    pub(crate) fn new(router: Weak<RouterInner>, release: &Release, store: Weak<Store>) -> Self {
        Self {
            router,
            function: release.manifest.name.clone(),
            dependencies: release.manifest.dependencies.clone(),
            store,
        }
    }
}

fn kv_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Host(format!("kv: {e}"))
}

impl NodeHost {
    fn store(&self) -> Result<Arc<Store>, SandboxError> {
        self.store
            .upgrade()
            .ok_or_else(|| SandboxError::Host("kv: the node is shutting down".into()))
    }
}

impl Host for NodeHost {
    fn call(&self, target: String, input: serde_json::Value, meta: CallMeta) -> HostCallFuture {
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
                    SandboxError::Host(format!("{text:?} is not a semver range: {e}"))
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

    fn kv_put(&self, key: &str, value: serde_json::Value) -> Result<(), SandboxError> {
        self.store()?
            .kv_put(&self.function, key, value.to_string().as_bytes())
            .map_err(kv_error)
    }

    fn kv_delete(&self, key: &str) -> Result<(), SandboxError> {
        self.store()?
            .kv_delete(&self.function, key)
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
}
