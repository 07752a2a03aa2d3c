//! `/v1/stats` (invocation statistics of the whole mesh) and `/v1/functions/{NAME}/rollback`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::node::{Node, NodeError};
use klf_actors::registry::RegistryError;
use klf_actors::router::FunctionStats;

use super::functions::node_error;
use super::schemas;
use super::types::{Deployment, ErrorBody, RollbackRequest, StatsQuery};
use super::{ApiError, ApiJson, ApiQuery, Caller};

/// Invocation statistics per `function@version`, merged over every alive member (each call
/// counted once, on the node that served it).
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "stats",
    tag = "functions",
    params(StatsQuery),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "One entry per function version that served calls", body = Vec<schemas::FunctionStats>),
        (status = 400, description = "`bad_request`: the query string is not valid (`local` must be true or false)", body = ErrorBody),
    ),
)]
pub async fn stats(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<Vec<FunctionStats>>, ApiError> {
    caller.require("reader")?;
    let mut stats = if query.local {
        node.function_stats()
    } else {
        node.mesh_function_stats().await
    };
    if let Some(name) = &query.function {
        stats.retain(|s| &s.function == name);
    }
    Ok(Json(stats))
}

/// Serve an earlier published version on every node until the next deploy.
#[utoipa::path(
    post,
    path = "/v1/functions/{name}/rollback",
    operation_id = "rollback_function",
    tag = "functions",
    params(("name" = String, Path, description = "The function's NAME")),
    request_body = RollbackRequest,
    security(("bearer" = ["deployer"])),
    responses(
        (status = 200, description = "The deployment, pinned to that version", body = Deployment),
        (status = 400, description = "`bad_request`: not a version, or a malformed body", body = ErrorBody),
        (status = 404, description = "`version_not_published`, `not_found`", body = ErrorBody),
        (status = 409, description = "`not_deployed`: the function has no deployment to pin", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`bad_request`: the body lacks `version`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the registry does not answer", body = ErrorBody),
    ),
)]
pub async fn rollback(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RollbackRequest>,
) -> Result<Json<Deployment>, ApiError> {
    caller.require("deployer")?;
    let version = semver::Version::parse(&body.version).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{:?} is not a version like 1.2.0: {e}", body.version),
        )
    })?;
    let deployment = kitchen
        .rollback(&name, version)
        .await
        .map_err(|e| match e {
            NodeError::Registry(RegistryError::VersionNotPublished { .. }) => ApiError::new(
                StatusCode::NOT_FOUND,
                "version_not_published",
                e.to_string(),
            ),
            NodeError::Registry(RegistryError::NotDeployed(_)) => {
                ApiError::new(StatusCode::CONFLICT, "not_deployed", e.to_string())
            }
            other => node_error(other),
        })?;
    Ok(Json(Deployment {
        name: deployment.name,
        version: deployment.version.map(|v| v.to_string()),
        replicas: deployment.replicas,
        enabled: deployment.enabled,
    }))
}
