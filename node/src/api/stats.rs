//! `/v1/stats` (invocation statistics of the whole mesh) and `/v1/functions/{NAME}/rollback`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::node::{Node, NodeError};
use klf_actors::registry::RegistryError;
use serde::Deserialize;

use super::functions::node_error;
use super::{ApiError, Caller};

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    /// Only this function's versions.
    function: Option<String>,
    /// This node's stats alone, without asking the peers.
    #[serde(default)]
    local: bool,
}

/// `GET /v1/stats[?function=NAME][&local=true]`: per function@version, merged over every alive
/// member (each call counted once, on the node that served it).
pub async fn stats(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Query(query): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let mut stats = if query.local {
        node.function_stats()
    } else {
        node.mesh_function_stats().await
    };
    if let Some(name) = &query.function {
        stats.retain(|s| &s.function == name);
    }
    Ok(Json(stats).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RollbackBody {
    version: String,
}

/// `POST /v1/functions/{NAME}/rollback {"version": "1.0.0"}`: serve that published version until
/// the next deploy.
pub async fn rollback(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<RollbackBody>,
) -> Result<Response, ApiError> {
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
    Ok(Json(serde_json::json!({
        "name": deployment.name,
        "version": deployment.version.map(|v| v.to_string()),
        "replicas": deployment.replicas,
        "enabled": deployment.enabled,
    }))
    .into_response())
}
