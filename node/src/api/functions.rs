//! `/v1/functions`: the registry operations (register, unregister, get, discover, find by type,
//! resolve and validate dependencies) and invocation over HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use klf_actors::functions::package::{Manifest, Package};
use klf_actors::functions::perf::DEFAULT_RUNS;
use klf_actors::node::validator::{MAX_PERF_RUNS, PerfMode, PerfOptions};
use klf_actors::node::{Node, NodeError};
use klf_actors::registry::{Catalog, RegistryError, RegistryMsg, Release};
use klf_actors::router::test_run::TestRun;
use klf_actors::router::{InvokeErrorKind, InvokeRequest};
use serde_json::Value;

use super::schemas;
use super::types::{
    AuditEntry, DeployRequest, Deployed, ErrorBody, FunctionInfo, FunctionListQuery,
    FunctionSummary, InvokeQuery, PackageBody, PerfSettings, PerfView, ReleaseView, Removed,
    ValidateRequest, Validation, YankRequest, YankView,
};
use super::{ApiError, ApiJson, ApiQuery, BodyLimits, Caller, InputBody};

impl PackageBody {
    fn into_package(self) -> Result<Package, ApiError> {
        Package::from_parts(
            self.manifest,
            self.source,
            self.examples.into_iter().collect(),
        )
        .and_then(|p| p.with_schemas(self.input_schema, self.output_schema))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_package", e.to_string()))
    }
}

fn summaries(catalog: &Catalog, kind: Option<&str>) -> Vec<FunctionSummary> {
    let mut names: Vec<&str> = catalog
        .releases()
        .map(|r| r.manifest.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let versions = catalog.versions(name);
            let latest = versions.first()?;
            if kind.is_some_and(|k| {
                k != latest.manifest.kind && versions.iter().all(|v| v.manifest.kind != k)
            }) {
                return None;
            }
            let deployment = catalog.deployment(name);
            Some(FunctionSummary {
                name: name.to_string(),
                latest: latest.manifest.version.to_string(),
                versions: versions
                    .iter()
                    .map(|r| r.manifest.version.to_string())
                    .collect(),
                kind: latest.manifest.kind.clone(),
                description: latest.manifest.description.clone(),
                replicas: deployment.map_or(0, |d| d.replicas),
                enabled: deployment.is_some_and(|d| d.enabled),
            })
        })
        .collect()
}

/// A NAME or NAME@RANGE path segment.
fn parse_target(target: &str) -> Result<(String, semver::VersionReq), ApiError> {
    let (name, range) = target.split_once('@').unwrap_or((target, "*"));
    let range = semver::VersionReq::parse(range).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{range:?} is not a semver range: {e}"),
        )
    })?;
    Ok((name.to_string(), range))
}

/// How registry failures map to HTTP.
pub fn node_error(e: NodeError) -> ApiError {
    let message = e.to_string();
    match e {
        NodeError::Registry(RegistryError::Conflict(_)) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", message)
        }
        NodeError::Registry(RegistryError::Dependencies(_)) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unresolved_dependencies",
            message,
        ),
        NodeError::InvalidCode(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_code", message)
        }
        NodeError::StaticAnalysis { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "static_analysis", message)
        }
        NodeError::OverBudget { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "over_budget", message)
        }
        NodeError::Registry(RegistryError::NotFound(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
        }
        NodeError::Registry(RegistryError::Artifact(_) | RegistryError::ArtifactUnavailable(_)) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "artifact_unavailable", message)
        }
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
    }
}

/// Discover every function, or find those of one type.
#[utoipa::path(
    get,
    path = "/v1/functions",
    operation_id = "list_functions",
    tag = "functions",
    params(FunctionListQuery),
    security(("bearer" = ["reader"])),
    responses((status = 200, description = "One summary per function, by name", body = Vec<FunctionSummary>)),
)]
pub async fn list(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FunctionListQuery>,
) -> Result<Json<Vec<FunctionSummary>>, ApiError> {
    caller.require("reader")?;
    Ok(Json(summaries(&node.catalog(), query.kind.as_deref())))
}

/// Register a package as `name@version` (immutable) and deploy it.
#[utoipa::path(
    post,
    path = "/v1/functions",
    operation_id = "deploy_function",
    tag = "functions",
    request_body = DeployRequest,
    security(("bearer" = ["deployer"])),
    responses(
        (status = 201, description = "Published and deployed", body = Deployed),
        (status = 400, description = "`invalid_package` (names the file and field), `static_analysis` (each error with its rule, line and column), `invalid_code`, `bad_request` (replicas out of 1..64, malformed body)", body = ErrorBody),
        (status = 409, description = "`conflict`: that version is already published with other content", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`unresolved_dependencies` (names the missing ranges, cycles, and ranges only yanked versions match, with the reason), `over_budget` (names the measured p99, memory or output against the budget), or `bad_request`: the body lacks a field", body = ErrorBody),
        (status = 502, description = "`artifact_unavailable`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn deploy(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiJson(body): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    caller.require("deployer")?;
    if body.replicas == 0 || body.replicas > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "replicas must be between 1 and 64",
        ));
    }
    let replicas = body.replicas;
    let options = perf_options(&body.perf)?;
    let package = body.package.into_package()?;
    // The validator first (publishing checks the code and dependencies again, as every deploy
    // path does), then the release, then its performance figures beside it.
    let validated = node
        .validate_package(&package, options)
        .await
        .map_err(node_error)?;
    let release = node
        .publish(package, replicas, caller.principal())
        .await
        .map_err(node_error)?;
    let perf = validated.perf.as_ref().map(PerfView::from);
    if let Some(record) = validated.perf
        && let Err(error) = node.record_perf(record).await
    {
        tracing::warn!(%error, id = %release.manifest.id(), "the performance figures were not stored");
    }
    Ok((
        StatusCode::CREATED,
        Json(Deployed {
            release: ReleaseView::from(&release),
            replicas,
            warnings: validated.warnings,
            perf,
        }),
    ))
}

/// The validator's performance options from a request.
fn perf_options(settings: &PerfSettings) -> Result<PerfOptions, ApiError> {
    let runs = settings.perf_runs.unwrap_or(DEFAULT_RUNS);
    if runs == 0 || runs > MAX_PERF_RUNS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("perf_runs must be between 1 and {MAX_PERF_RUNS}"),
        ));
    }
    Ok(PerfOptions {
        mode: settings.perf.map_or(PerfMode::Fail, PerfMode::from),
        runs,
        latency_budget_ms: settings.latency_budget_ms,
    })
}

/// Validate a package and resolve its dependencies without publishing it.
#[utoipa::path(
    post,
    path = "/v1/functions/validate",
    operation_id = "validate_function",
    tag = "functions",
    request_body = ValidateRequest,
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The package is valid, its dependencies resolve and its examples run within budget", body = Validation),
        (status = 400, description = "`invalid_package` (names the file and field), `static_analysis` (each error with its rule, line and column), `invalid_code`, `bad_request` (malformed body)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`unresolved_dependencies` (missing, cyclic, or only yanked versions), `over_budget` (names the measured p99, memory or output against the budget), or `bad_request`: the body lacks a field", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn validate(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiJson(body): ApiJson<ValidateRequest>,
) -> Result<Json<Validation>, ApiError> {
    caller.require("reader")?;
    let options = perf_options(&body.perf)?;
    let package = body.package.into_package()?;
    let validated = node
        .validate_package(&package, options)
        .await
        .map_err(node_error)?;
    Ok(Json(Validation {
        valid: true,
        id: package.manifest.id(),
        dependencies: validated
            .dependencies
            .iter()
            .map(|r| r.manifest.id())
            .collect(),
        warnings: validated.warnings,
        perf: validated.perf.as_ref().map(PerfView::from),
    }))
}

async fn resolve(node: &Node, manifest: Manifest) -> Result<Vec<Release>, ApiError> {
    node.ask_registry(|reply| RegistryMsg::ResolveDependencies {
        manifest: Box::new(manifest),
        reply,
    })
    .await
    .map_err(node_error)?
    .map_err(|e| node_error(NodeError::Registry(e)))
}

/// Get a function: the highest release matching the range, its versions, deployment, examples
/// and schemas.
#[utoipa::path(
    get,
    path = "/v1/functions/{target}",
    operation_id = "get_function",
    tag = "functions",
    params(("target" = String, Path, description = "NAME or NAME@RANGE (a semver range, percent-encoded)")),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The resolved release", body = FunctionInfo),
        (status = 400, description = "`bad_request`: the range is not semver", body = ErrorBody),
        (status = 404, description = "`not_found` (no such function) or `no_matching_version` (names the published versions)", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn info(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    caller.require("reader")?;
    let (catalog, release) = resolved_release(&node, &target)?;
    let package = node
        .ask_registry(|reply| RegistryMsg::Package {
            release: Box::new(release.clone()),
            reply,
        })
        .await
        .map_err(node_error)?;
    let name = release.manifest.name.clone();
    let deployment = catalog.deployment(&name);
    let schema = |text: Option<&String>| text.and_then(|t| serde_json::from_str::<Value>(t).ok());
    let (examples, input_schema, output_schema, artifact_error) = match &package {
        Ok(p) => (
            p.examples
                .iter()
                .map(|e| (e.name.clone(), e.input.clone()))
                .collect(),
            schema(p.input_schema.as_ref()),
            schema(p.output_schema.as_ref()),
            None,
        ),
        Err(e) => (BTreeMap::new(), None, None, Some(e.to_string())),
    };
    Ok(Json(FunctionInfo {
        release: ReleaseView::from(&release),
        versions: catalog
            .versions(&name)
            .iter()
            .map(|r| r.manifest.version.to_string())
            .collect(),
        replicas: deployment.map_or(0, |d| d.replicas),
        enabled: deployment.is_some_and(|d| d.enabled),
        served: catalog
            .served(&name)
            .map(|r| r.manifest.version.to_string()),
        pinned: deployment
            .and_then(|d| d.version.as_ref())
            .map(ToString::to_string),
        examples,
        input_schema,
        output_schema,
        artifact_error,
        yanked: catalog
            .yank(&name, &release.manifest.version)
            .map(YankView::from),
        perf: catalog
            .perf(&name, &release.manifest.version)
            .map(PerfView::from),
        yanked_versions: catalog
            .yanks()
            .filter(|y| y.name == name)
            .map(|y| (y.version.to_string(), YankView::from(y)))
            .collect(),
    }))
}

/// The longest yank reason accepted.
const MAX_YANK_REASON: usize = 500;

/// Yank a published version: dependency resolution skips it on every node from now on (it keeps
/// serving what already runs it); `klf fn audit` names the deployed functions still reaching it.
#[utoipa::path(
    post,
    path = "/v1/functions/{name}/versions/{version}/yank",
    operation_id = "yank_function_version",
    tag = "functions",
    params(
        ("name" = String, Path, description = "The function's NAME"),
        ("version" = String, Path, description = "An exact published version, such as 1.2.0"),
    ),
    request_body = YankRequest,
    security(("bearer" = ["deployer"])),
    responses(
        (status = 200, description = "The yank, as every node will hold it", body = YankView),
        (status = 400, description = "`bad_request`: not a version, an empty or over-long reason, or a malformed body", body = ErrorBody),
        (status = 404, description = "`not_found`, `version_not_published`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`bad_request`: the body lacks `reason`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn yank(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
    ApiJson(body): ApiJson<YankRequest>,
) -> Result<Json<YankView>, ApiError> {
    caller.require("deployer")?;
    let version = semver::Version::parse(&version).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{version:?} is not a version like 1.2.0: {e}"),
        )
    })?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_YANK_REASON {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the reason must be 1 to {MAX_YANK_REASON} characters"),
        ));
    }
    let yank = node
        .yank(&name, version, reason, caller.principal())
        .await
        .map_err(|e| match e {
            NodeError::Registry(RegistryError::VersionNotPublished { .. }) => ApiError::new(
                StatusCode::NOT_FOUND,
                "version_not_published",
                e.to_string(),
            ),
            other => node_error(other),
        })?;
    Ok(Json(YankView::from(&yank)))
}

/// Deployed functions whose calls to a dependency reach a yanked release (the version each
/// serves, and what a new deploy would resolve to instead).
#[utoipa::path(
    get,
    path = "/v1/audit/dependencies",
    operation_id = "audit_dependencies",
    tag = "functions",
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "One entry per function and yanked dependency; empty when none", body = Vec<AuditEntry>),
    ),
)]
pub async fn audit(
    State(node): State<Arc<Node>>,
    caller: Caller,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require("reader")?;
    Ok(Json(
        node.catalog()
            .audit()
            .into_iter()
            .map(AuditEntry::from)
            .collect(),
    ))
}

/// The release `NAME[@RANGE]` resolves to, with the catalog it was read from.
fn resolved_release(node: &Node, target: &str) -> Result<(Arc<Catalog>, Release), ApiError> {
    let (name, range) = parse_target(target)?;
    let catalog = node.catalog();
    let release = catalog
        .resolve(&name, &range)
        .cloned()
        .ok_or_else(|| not_found(&catalog, &name, &range))?;
    Ok((catalog, release))
}

fn not_found(catalog: &Catalog, name: &str, range: &semver::VersionReq) -> ApiError {
    let versions = catalog.versions(name);
    if versions.is_empty() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no function named {name}"),
        )
    } else {
        let known: Vec<String> = versions
            .iter()
            .map(|r| r.manifest.version.to_string())
            .collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_matching_version",
            format!(
                "no version of {name} matches {range} (published: {})",
                known.join(", ")
            ),
        )
    }
}

/// Resolve a function's dependency graph, dependencies first.
#[utoipa::path(
    get,
    path = "/v1/functions/{target}/dependencies",
    operation_id = "function_dependencies",
    tag = "functions",
    params(("target" = String, Path, description = "NAME or NAME@RANGE")),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "Every release it resolves to, dependencies first, itself last", body = Vec<ReleaseView>),
        (status = 400, description = "`bad_request`: the range is not semver", body = ErrorBody),
        (status = 404, description = "`not_found` or `no_matching_version`", body = ErrorBody),
        (status = 422, description = "`unresolved_dependencies`: names missing ranges and cycles", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn dependencies(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Json<Vec<ReleaseView>>, ApiError> {
    caller.require("reader")?;
    let (_, release) = resolved_release(&node, &target)?;
    let resolved = resolve(&node, release.manifest).await?;
    Ok(Json(resolved.iter().map(ReleaseView::from).collect()))
}

/// Unregister one version (NAME@VERSION), or the function and its deployment (NAME).
#[utoipa::path(
    delete,
    path = "/v1/functions/{target}",
    operation_id = "remove_function",
    tag = "functions",
    params(("target" = String, Path, description = "NAME or NAME@VERSION (an exact version)")),
    security(("bearer" = ["deployer"])),
    responses(
        (status = 200, description = "What was unregistered", body = Removed),
        (status = 400, description = "`bad_request`: the version is not semver", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn remove(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    caller.require("deployer")?;
    let (name, version) = match target.split_once('@') {
        Some((name, v)) => {
            let version = semver::Version::parse(v).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{v:?} is not a version like 1.2.0: {e}"),
                )
            })?;
            (name.to_string(), Some(version))
        }
        None => (target.clone(), None),
    };
    let removed = node.unregister(&name, version).await.map_err(node_error)?;
    Ok(Json(Removed { removed }))
}

/// The HTTP status of an invocation failure.
fn invoke_status(kind: InvokeErrorKind) -> StatusCode {
    use InvokeErrorKind as K;
    match kind {
        K::UnknownFunction | K::NoMatchingVersion | K::NotDeployed => StatusCode::NOT_FOUND,
        K::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        K::InputTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        K::BadInput | K::CallDepthExceeded => StatusCode::BAD_REQUEST,
        K::Timeout => StatusCode::GATEWAY_TIMEOUT,
        K::OutOfMemory
        | K::UserError
        | K::SyntaxError
        | K::BadModule
        | K::BadOutput
        | K::CapabilityDenied => StatusCode::UNPROCESSABLE_ENTITY,
        K::NoHost | K::NotHosted | K::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        K::HostError => StatusCode::BAD_GATEWAY,
        K::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Call a function from this node, wherever it runs: the body is the input JSON, the answer its
/// output JSON.
#[utoipa::path(
    post,
    path = "/v1/functions/{target}/invoke",
    operation_id = "invoke_function",
    tag = "functions",
    params(
        ("target" = String, Path, description = "NAME or NAME@RANGE"),
        InvokeQuery,
        ("traceparent" = Option<String>, Header, description = "W3C trace context: the call's spans join the caller's trace"),
    ),
    request_body(content = Value, description = "The function's input: any JSON value, at most `klf up --max-input` bytes (default and maximum 1 MiB)", content_type = "application/json"),
    security(("bearer" = ["invoker"])),
    responses(
        (status = 200, description = "The function's output", body = Value, content_type = "application/json",
            headers(
                ("x-klf-served-by" = String, description = "`name@version` that served the call"),
                ("x-klf-node" = String, description = "Id of the node that ran it"),
                ("x-klf-trace-id" = String, description = "The call's trace id (`klf trace ID`): the caller's `traceparent`, else a new trace; also on error answers"),
            )),
        (status = 400, description = "`bad_input` (not JSON), `bad_request` (bad range or query string), `call_depth_exceeded`", body = ErrorBody),
        (status = 404, description = "`unknown_function`, `no_matching_version`, `not_deployed`", body = ErrorBody),
        (status = 413, description = "`input_too_large`: over this node's `--max-input` (the message states the limit and the flag)", body = ErrorBody),
        (status = 422, description = "The function failed: `user_error`, `out_of_memory`, `syntax_error`, `bad_module`, `bad_output`, `capability_denied`", body = ErrorBody),
        (status = 429, description = "`overloaded`: every instance is at its concurrency limit", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 502, description = "`host_error`", body = ErrorBody),
        (status = 503, description = "`no_host`, `not_hosted`, `unreachable`", body = ErrorBody),
        (status = 504, description = "`timeout`", body = ErrorBody),
    ),
)]
pub async fn invoke(
    State(node): State<Arc<Node>>,
    axum::Extension(limits): axum::Extension<BodyLimits>,
    caller: Caller,
    Path(target): Path<String>,
    ApiQuery(query): ApiQuery<InvokeQuery>,
    headers: axum::http::HeaderMap,
    InputBody(body): InputBody,
) -> Result<Response, ApiError> {
    caller.require("invoker")?;
    let (name, range) = parse_target(&target)?;
    // The body limit layer already holds to this; kept so the limit holds whatever the layers.
    if body.len() > limits.max_input {
        return Err(super::input_too_large(limits));
    }
    let input: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_input",
            format!("the input is not JSON: {e}"),
        )
    })?;
    let timeout =
        std::time::Duration::from_millis(query.timeout_ms.unwrap_or(10_000).clamp(1, 300_000));
    let mut request = InvokeRequest::new(&name, input, timeout);
    request.range = range;
    request.caller = caller.principal().to_string();
    // A client's W3C trace context: the call's spans join the client's trace. Without one the
    // call starts a trace here, so that its id can be handed back (`klf fn invoke --trace`).
    let trace_parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .map(str::to_string)
        .unwrap_or_else(new_trace_parent);
    let trace_id = trace_id_of(&trace_parent);
    request.trace_parent = Some(trace_parent);
    let mut response = match node.invoke(request).await {
        Ok(outcome) => (
            [
                ("x-klf-served-by", outcome.served_by),
                ("x-klf-node", outcome.node),
            ],
            Json(outcome.output),
        )
            .into_response(),
        Err(e) => ApiError::new(invoke_status(e.kind), e.kind.as_str(), e.message).into_response(),
    };
    if let Some(id) = trace_id.and_then(|id| axum::http::HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("x-klf-trace-id", id);
    }
    Ok(response)
}

/// A W3C `traceparent` for a call that arrived without one: a new random trace.
fn new_trace_parent() -> String {
    let trace = rand::random::<u128>().max(1);
    let span = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The trace id of a well-formed `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id_of(trace_parent: &str) -> Option<String> {
    let mut parts = trace_parent.split('-');
    let (_, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_ascii_lowercase())
}

/// Run a deployed function's own tests (`BaseFunction.test()`, from its `static tests`) in a
/// real instance on this node: the hosted one, else a throwaway one.
#[utoipa::path(
    post,
    path = "/v1/functions/{target}/test",
    operation_id = "test_function",
    tag = "functions",
    params(("target" = String, Path, description = "NAME or NAME@RANGE")),
    security(("bearer" = ["invoker"])),
    responses(
        (status = 200, description = "The run, passed or not", body = schemas::TestRun),
        (status = 400, description = "`bad_request`: the range is not semver", body = ErrorBody),
        (status = 404, description = "`unknown_function`, `no_matching_version`, `not_deployed`", body = ErrorBody),
        (status = 422, description = "The instance could not run them: `syntax_error`, `bad_module`, …", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
pub async fn test(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Json<TestRun>, ApiError> {
    caller.require("invoker")?;
    let (name, range) = parse_target(&target)?;
    match node.router().test_function(&name, &range).await {
        Ok(run) => Ok(Json(run)),
        Err(e) => Err(ApiError::new(
            invoke_status(e.kind),
            e.kind.as_str(),
            e.message,
        )),
    }
}
