//! The node's HTTP API (axum): health, readiness and the `/v1` operations, behind bearer tokens.

pub mod chef;
pub mod functions;
pub mod ingredients;
pub mod metrics;
pub mod roi;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::node::Node;
use klf_actors::security::ApiToken;
use serde::Deserialize;

/// Longest join token lifetime the API grants.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// An API error: a status and a message a person can act on, as `{"error":{"code","message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The caller, authenticated by its bearer token.
pub struct Caller(ApiToken);

impl FromRequestParts<Arc<Node>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "missing bearer token: send `Authorization: Bearer <token>` (the admin token is in DATA_DIR/admin.token)",
                )
            })?;
        node.authenticate(bearer.trim())
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "unknown or revoked API token",
                )
            })
    }
}

impl Caller {
    /// Who is calling.
    pub fn principal(&self) -> &str {
        &self.0.principal
    }

    pub(crate) fn require(&self, role: &str) -> Result<(), ApiError> {
        if self.0.has_role(role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("principal {} lacks the {role} role", self.0.principal),
            ))
        }
    }
}

/// The API's routes.
pub fn router(node: Arc<Node>, kitchen: Arc<Kitchen>, chef: chef::ChefSlot) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/node", get(node_info))
        .route("/v1/members", get(members))
        .route("/v1/join-tokens", post(create_join_token))
        .route(
            "/v1/functions",
            get(functions::list).post(functions::deploy),
        )
        .route("/v1/functions/validate", post(functions::validate))
        .route(
            "/v1/functions/{target}",
            get(functions::info).delete(functions::remove),
        )
        .route(
            "/v1/functions/{target}/dependencies",
            get(functions::dependencies),
        )
        .route("/v1/functions/{target}/invoke", post(functions::invoke))
        .route("/v1/functions/{target}/test", post(functions::test))
        .route("/v1/ingredients", get(ingredients::list))
        .route("/v1/ingredients/{name}", get(ingredients::show))
        .route(
            "/v1/ingredients/{name}/render",
            post(ingredients::render_recipe),
        )
        .route("/v1/chef", post(chef::run))
        .route("/v1/roi", get(roi::mesh))
        .route("/v1/roi/{name}", get(roi::function))
        .route("/v1/functions/{target}/rollback", post(stats::rollback))
        .route("/v1/stats", get(stats::stats))
        .layer(axum::Extension(chef))
        .layer(axum::Extension(kitchen))
        .with_state(node)
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    kitchen: Arc<Kitchen>,
    chef: chef::ChefSlot,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, kitchen, chef))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    match node.members().await {
        Ok(members) => Json(serde_json::json!({
            "ready": true,
            "members": members.len(),
        }))
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
            .into_response(),
    }
}

async fn node_info(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let s = node.settings();
    Ok(Json(serde_json::json!({
        "id": s.node_id,
        "name": s.name,
        "mesh_id": s.mesh_id,
        "mesh_name": s.mesh_name,
        "addr": node.identity().addr,
        "api": node.identity().api,
        "generation": node.identity().generation,
        "holds_ca": node.holds_ca(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response())
}

async fn members(State(node): State<Arc<Node>>, caller: Caller) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let members = node.members().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(members).into_response())
}

#[derive(Debug, Deserialize)]
struct JoinTokenRequest {
    #[serde(default = "default_ttl_secs")]
    ttl_secs: u64,
}

fn default_ttl_secs() -> u64 {
    600
}

async fn create_join_token(
    State(node): State<Arc<Node>>,
    caller: Caller,
    body: Option<Json<JoinTokenRequest>>,
) -> Result<Response, ApiError> {
    caller.require("admin")?;
    let ttl_secs = body.map_or(default_ttl_secs(), |Json(b)| b.ttl_secs);
    let ttl = Duration::from_secs(ttl_secs);
    if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "ttl_secs must be between 1 and {}",
                MAX_JOIN_TOKEN_TTL.as_secs()
            ),
        ));
    }
    let token = node
        .create_join_token(ttl)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_issue", e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "token": token.encode(),
            "mesh_id": token.mesh_id,
            "seed": token.seed,
            "expires_at": token.expires_at,
        })),
    )
        .into_response())
}
