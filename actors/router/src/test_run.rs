//! Running a deployed function's own tests (`BaseFunction.test()`, from its `static tests`) in a
//! real instance: the one this node hosts, or else a throwaway instance started on this node from
//! the catalog's artifact (same code, same limits, same host capabilities as a hosted one).

use std::time::Duration;

use ractor::rpc::CallResult;
use serde::{Deserialize, Serialize};

use super::{InvokeError, InvokeErrorKind, Router};
use crate::instances::{function_code, sandbox_limits};
use klf_functions::native::is_native;
use klf_functions::sandbox::{Instance, InstanceMsg};
use klf_registry::RegistryMsg;

/// The outcome of one test run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRun {
    /// `name@version` that was tested.
    pub function: String,
    /// The node that ran the tests.
    pub node: String,
    /// Whether the hosted instance ran them (otherwise a throwaway instance did).
    pub hosted: bool,
    pub passed: u64,
    pub failed: u64,
    /// `[{name, passed, expected?, actual?, error?}]`, as `BaseFunction.test()` reports them.
    pub results: Vec<serde_json::Value>,
}

fn internal(message: impl Into<String>) -> InvokeError {
    InvokeError::new(InvokeErrorKind::Internal, message)
}

impl Router {
    /// Runs the tests of the deployed release of `name` that matches `range`, on this node.
    pub async fn test_function(
        &self,
        name: &str,
        range: &semver::VersionReq,
    ) -> Result<TestRun, InvokeError> {
        let inner = &self.inner;
        // The stable release (or, for a range only the canary matches, the canary's).
        let resolved = inner.resolve(name, range)?;
        let Some(release) = resolved
            .stable
            .as_ref()
            .map(|(release, _)| release)
            .or(resolved.canary.as_ref().map(|(_, release)| release))
            .cloned()
        else {
            return Err(internal(format!("{name} resolves to no release")));
        };
        let hosted = inner
            .instances
            .get(name)
            .filter(|h| h.release.artifact == release.artifact);
        let report = match (&hosted, is_native(&release.manifest.entry)) {
            (_, true) => serde_json::json!({ "passed": 0, "failed": 0, "results": [] }),
            (Some(hosted), false) => {
                let wait = Duration::from_millis(release.manifest.limits.timeout_ms)
                    + Duration::from_secs(5);
                match hosted
                    .actor
                    .call(|reply| InstanceMsg::Test { reply }, Some(wait))
                    .await
                {
                    Ok(CallResult::Success(result)) => result?,
                    Ok(_) => return Err(internal("the instance did not answer the test run")),
                    Err(e) => return Err(internal(format!("instance: {e}")).caused_by(e)),
                }
            }
            (None, false) => {
                let package = inner
                    .registry
                    .call(
                        |reply| RegistryMsg::Package {
                            release: Box::new(release.as_ref().clone()),
                            reply,
                        },
                        Some(Duration::from_secs(10)),
                    )
                    .await
                    .map_err(|e| internal(format!("registry: {e}")).caused_by(e))?
                    .success_or(())
                    .map_err(|_| internal("the registry did not answer"))?
                    .map_err(|e| internal(e.to_string()).caused_by(e))?;
                let instance = Instance::start(
                    function_code(&package.manifest, &package.source),
                    sandbox_limits(&release.manifest),
                    inner.instances.host_for(&release),
                )
                .await?;
                instance.test().await?
            }
        };
        let count = |key: &str| report.get(key).and_then(serde_json::Value::as_u64);
        let (Some(passed), Some(failed)) = (count("passed"), count("failed")) else {
            return Err(InvokeError::new(
                InvokeErrorKind::BadOutput,
                format!("test() returned {report}, not {{passed, failed, results}}"),
            ));
        };
        let results = report
            .get("results")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(TestRun {
            function: release.manifest.id(),
            node: inner.me.clone(),
            hosted: hosted.is_some(),
            passed,
            failed,
            results,
        })
    }
}
