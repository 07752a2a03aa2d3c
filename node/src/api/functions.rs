//! `/v1/functions`: the registry operations (register, unregister, get, discover, find by type,
//! resolve and validate dependencies) and invocation over HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use klf_actors::functions::package::{Manifest, Package};
use klf_actors::node::{Node, NodeError};
use klf_actors::registry::{Catalog, RegistryError, RegistryMsg, Release};
use klf_actors::router::{InvokeErrorKind, InvokeRequest, MAX_INPUT_BYTES};
use serde::{Deserialize, Serialize};

use super::{ApiError, Caller};

/// A package as the API receives it: the text of its files.
#[derive(Debug, Serialize, Deserialize)]
pub struct PackageBody {
    /// The `klf.toml` text.
    pub manifest: String,
    /// The entry module's source.
    pub source: String,
    /// `examples/NAME.json` contents by NAME.
    #[serde(default)]
    pub examples: BTreeMap<String, String>,
    /// `schema/input.json` and `schema/output.json`, if the package has them.
    #[serde(default)]
    pub input_schema: Option<String>,
    #[serde(default)]
    pub output_schema: Option<String>,
}

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

#[derive(Debug, Deserialize)]
pub struct DeployBody {
    #[serde(flatten)]
    pub package: PackageBody,
    #[serde(default = "one")]
    pub replicas: u32,
}

fn one() -> u32 {
    1
}

/// One published version, as shown to users.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseView {
    pub id: String,
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub idempotent: bool,
    pub capabilities: Vec<String>,
    pub dependencies: BTreeMap<String, String>,
    pub limits: klf_actors::functions::package::Limits,
    pub config: serde_json::Value,
    pub value_per_call: f64,
    pub artifact: String,
    pub artifact_len: u64,
    pub signer: String,
    pub owner: String,
    pub created_unix_ms: u64,
}

impl From<&Release> for ReleaseView {
    fn from(r: &Release) -> Self {
        let m = &r.manifest;
        Self {
            id: m.id(),
            name: m.name.clone(),
            version: m.version.to_string(),
            kind: m.kind.clone(),
            description: m.description.clone(),
            idempotent: m.idempotent,
            capabilities: m.capabilities.clone(),
            dependencies: m
                .dependencies
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            limits: m.limits,
            config: m.config.clone(),
            value_per_call: m.value_per_call,
            artifact: hex::encode(r.artifact),
            artifact_len: r.artifact_len,
            signer: r.signer.clone(),
            owner: r.owner.clone(),
            created_unix_ms: r.created_unix_ms,
        }
    }
}

/// One function in a listing.
#[derive(Debug, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub name: String,
    pub latest: String,
    pub versions: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// Desired instances (0 when not deployed).
    pub replicas: u32,
    pub enabled: bool,
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
        NodeError::Registry(RegistryError::NotFound(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
        }
        NodeError::Registry(RegistryError::Artifact(_) | RegistryError::ArtifactUnavailable(_)) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "artifact_unavailable", message)
        }
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `GET /v1/functions[?type=T]`: discover, or find by type.
pub async fn list(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    Ok(Json(summaries(&node.catalog(), query.kind.as_deref())).into_response())
}

/// `POST /v1/functions`: register and deploy.
pub async fn deploy(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Json(body): Json<DeployBody>,
) -> Result<Response, ApiError> {
    caller.require("deployer")?;
    if body.replicas == 0 || body.replicas > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "replicas must be between 1 and 64",
        ));
    }
    let replicas = body.replicas;
    let package = body.package.into_package()?;
    let release = node
        .publish(package, replicas, caller.principal())
        .await
        .map_err(node_error)?;
    let mut view = serde_json::to_value(ReleaseView::from(&release)).unwrap_or_default();
    view["replicas"] = replicas.into();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `POST /v1/functions/validate`: check a package and its dependencies without publishing.
pub async fn validate(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Json(body): Json<PackageBody>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let package = body.into_package()?;
    let resolved = resolve(&node, package.manifest.clone()).await?;
    Ok(Json(serde_json::json!({
        "valid": true,
        "id": package.manifest.id(),
        "dependencies": resolved.iter().map(|r| r.manifest.id()).collect::<Vec<_>>(),
    }))
    .into_response())
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

/// `GET /v1/functions/{NAME[@RANGE]}`: the resolved release, its versions, deployment and examples.
pub async fn info(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let (catalog, release) = resolved_release(&node, &target)?;
    let package = node
        .ask_registry(|reply| RegistryMsg::Package {
            release: Box::new(release.clone()),
            reply,
        })
        .await
        .map_err(node_error)?;
    let examples: BTreeMap<String, serde_json::Value> = match &package {
        Ok(p) => p
            .examples
            .iter()
            .map(|e| (e.name.clone(), e.input.clone()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let name = release.manifest.name.clone();
    let deployment = catalog.deployment(&name);
    let mut view = serde_json::to_value(ReleaseView::from(&release)).unwrap_or_default();
    view["versions"] = catalog
        .versions(&name)
        .iter()
        .map(|r| r.manifest.version.to_string())
        .collect::<Vec<_>>()
        .into();
    view["replicas"] = deployment.map_or(0, |d| d.replicas).into();
    view["enabled"] = deployment.is_some_and(|d| d.enabled).into();
    // What the mesh runs: the version a rollback pinned, else the highest.
    view["served"] = catalog
        .served(&name)
        .map(|r| r.manifest.version.to_string())
        .into();
    view["pinned"] = deployment
        .and_then(|d| d.version.as_ref())
        .map(ToString::to_string)
        .into();
    view["examples"] = serde_json::to_value(examples).unwrap_or_default();
    let schema = |text: Option<&String>| {
        text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    if let Ok(p) = &package {
        view["input_schema"] = schema(p.input_schema.as_ref());
        view["output_schema"] = schema(p.output_schema.as_ref());
    }
    if let Err(e) = package {
        view["artifact_error"] = e.to_string().into();
    }
    Ok(Json(view).into_response())
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

/// `GET /v1/functions/{NAME[@RANGE]}/dependencies`: the resolved dependency graph, dependencies first.
pub async fn dependencies(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let (_, release) = resolved_release(&node, &target)?;
    let resolved = resolve(&node, release.manifest).await?;
    Ok(Json(resolved.iter().map(ReleaseView::from).collect::<Vec<_>>()).into_response())
}

/// `DELETE /v1/functions/{NAME[@VERSION]}`: unregister a version, or the whole function.
pub async fn remove(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
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
    Ok(Json(serde_json::json!({ "removed": removed })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct InvokeQuery {
    /// How long the caller waits, in milliseconds (default 10 s, at most 5 min).
    timeout_ms: Option<u64>,
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

/// `POST /v1/functions/{NAME[@RANGE]}/invoke`: the body is the input JSON, the answer the output
/// JSON (header `x-klf-served-by: NAME@VERSION`).
pub async fn invoke(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
    Query(query): Query<InvokeQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require("invoker")?;
    let (name, range) = parse_target(&target)?;
    if body.len() > MAX_INPUT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            format!(
                "input of {} bytes exceeds the limit of {MAX_INPUT_BYTES}",
                body.len()
            ),
        ));
    }
    let input: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
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
    // A client's W3C trace context: the call's spans join the client's trace.
    request.trace_parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .map(str::to_string);
    match node.invoke(request).await {
        Ok(outcome) => Ok((
            [
                ("x-klf-served-by", outcome.served_by),
                ("x-klf-node", outcome.node),
            ],
            Json(outcome.output),
        )
            .into_response()),
        Err(e) => Err(ApiError::new(
            invoke_status(e.kind),
            e.kind.as_str(),
            e.message,
        )),
    }
}

/// `POST /v1/functions/{NAME[@RANGE]}/test`: runs the function's own tests (`BaseFunction.test()`)
/// in a real instance on this node; `{function, node, hosted, passed, failed, results}`.
pub async fn test(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
    caller.require("invoker")?;
    let (name, range) = parse_target(&target)?;
    match node.router().test_function(&name, &range).await {
        Ok(run) => Ok(Json(run).into_response()),
        Err(e) => Err(ApiError::new(
            invoke_status(e.kind),
            e.kind.as_str(),
            e.message,
        )),
    }
}
