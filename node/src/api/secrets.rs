//! `/v1/secrets`: the secrets functions read with `ctx.secret`, set on every node of the mesh.
//!
//! A secret is a file `<data>/secrets/NAME` on each node (what the function's host reads); setting
//! one here stores it on every alive member over KLF. Values are never answered back or logged.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use klf_actors::node::Node;
use klf_actors::node::secrets::{MAX_SECRET_BYTES, is_valid_secret_name};

use super::types::{ErrorBody, SecretSet, SecretValue};
use super::{ApiError, ApiJson, Caller};

/// Set secret NAME on every alive node (what `ctx.secret(NAME)` reads wherever the function runs).
#[utoipa::path(
    put,
    path = "/v1/secrets/{name}",
    operation_id = "set_secret",
    tag = "secrets",
    params(("name" = String, Path, description = "1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'")),
    request_body = SecretValue,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Stored on every node listed", body = SecretSet),
        (status = 400, description = "`bad_request`: not a secret name, or the value is empty or over 64 KiB", body = ErrorBody),
        (status = 502, description = "`partly_stored`: some nodes could not store it (the message names them)", body = ErrorBody),
    ),
)]
pub async fn set(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SecretValue>,
) -> Result<Json<SecretSet>, ApiError> {
    caller.require("admin")?;
    if !is_valid_secret_name(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{name:?} is not a secret name: 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'"),
        ));
    }
    if body.value.is_empty() || body.value.len() > MAX_SECRET_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a secret's value is 1 to {MAX_SECRET_BYTES} bytes of text"),
        ));
    }
    let nodes = node
        .put_secret_everywhere(&name, &body.value)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "partly_stored", e.to_string()))?;
    tracing::info!(secret = %name, principal = %caller.principal(), nodes = nodes.len(), "secret set");
    Ok(Json(SecretSet { name, nodes }))
}
