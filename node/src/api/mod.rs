//! The node's HTTP API (axum): health, readiness and the `/v1` operations, behind bearer tokens.
//!
//! Every route is registered through [`utoipa_axum`] from its `#[utoipa::path]` description, so the
//! OpenAPI document ([`openapi::document`], served at `/v1/openapi.json`) lists exactly the routes
//! the server answers, with the wire types of [`types`].

pub mod chef;
pub mod functions;
pub mod ingredients;
pub mod metrics;
pub mod openapi;
pub mod roi;
pub mod schemas;
pub mod secrets;
pub mod stats;
pub mod traces;
pub mod types;

#[cfg(test)]
mod contract_tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, OptionalFromRequest, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::node::Node;
use klf_actors::router::MAX_INPUT_BYTES;
use klf_actors::security::ApiToken;
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::types::{ErrorBody, JoinToken, JoinTokenRequest, NodeInfo, Readiness};

/// Longest join token lifetime the API grants.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Largest JSON body of any route but invoke (packages, Chef requests, renders): 16 MiB, the
/// largest KLF frame. A package travels between nodes as one artifact in one frame, so a body
/// beyond it could never be replicated; it is fixed for that reason, not configurable.
pub const MAX_BODY_BYTES: usize = klf_proto::Limits::DEFAULT_MAX_FRAME_LEN as usize;

/// How large a request body the API reads before refusing it with 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body of `POST /v1/functions/{target}/invoke` (the function's input), set by
    /// `klf up --max-input`. At most [`MAX_INPUT_BYTES`]: the router refuses larger inputs
    /// wherever they come from, so a higher API limit could not be honoured.
    pub max_input: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_input: MAX_INPUT_BYTES,
        }
    }
}

/// A byte count as people read it: `1048576 bytes (1 MiB)`.
pub fn bytes_text(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{bytes} bytes ({} MiB)", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{bytes} bytes ({} KiB)", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// An API error: a status and a message a person can act on, as `{"error":{"code","message"}}`
/// ([`ErrorBody`]).
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

    /// A JSON body the extractor refused, in the API's error shape with axum's status (400 bad
    /// JSON, 415 not `application/json`, 422 wrong fields, 413 over [`MAX_BODY_BYTES`]).
    fn json_rejection(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                status,
                "body_too_large",
                format!(
                    "the request body exceeds the API's limit of {} for JSON bodies (the largest KLF frame, which a package must fit in to reach other nodes); it cannot be raised",
                    bytes_text(MAX_BODY_BYTES)
                ),
            );
        }
        let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            "unsupported_media_type"
        } else {
            "bad_request"
        };
        Self::new(
            status,
            code,
            format!("the request body is not valid: {}", rejection.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

/// A JSON request body whose refusals (not JSON, wrong fields, too large) answer in the API's
/// error shape instead of axum's plain text.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        <Json<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(ApiError::json_rejection)
    }
}

/// No body at all (no `Content-Type`) is `None`; a body that is there must be valid.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        <Json<T> as OptionalFromRequest<S>>::from_request(req, state)
            .await
            .map(|body| body.map(|Json(value)| Self(value)))
            .map_err(ApiError::json_rejection)
    }
}

/// A query string whose refusals (`?local=maybe`) answer 400 in the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    "bad_request",
                    format!("the query string is not valid: {}", rejection.body_text()),
                )
            })
    }
}

/// The raw body of an invocation (the function's input), refused with 413 `input_too_large`
/// beyond [`BodyLimits::max_input`].
pub struct InputBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for InputBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limits = req
            .extensions()
            .get::<BodyLimits>()
            .copied()
            .unwrap_or_default();
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) => Err(input_rejection(&rejection, limits)),
        }
    }
}

fn input_rejection(rejection: &BytesRejection, limits: BodyLimits) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        input_too_large(limits)
    } else {
        ApiError::new(
            rejection.status(),
            "bad_input",
            format!("cannot read the input: {}", rejection.body_text()),
        )
    }
}

/// The 413 of an input over this node's limit: states the limit and how to change it.
pub(crate) fn input_too_large(limits: BodyLimits) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "input_too_large",
        format!(
            "the input exceeds this node's limit of {} for a function input; start the node with `klf up --max-input BYTES` to change it (at most {}, the router's limit for any input)",
            bytes_text(limits.max_input),
            bytes_text(MAX_INPUT_BYTES)
        ),
    )
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

/// The OpenAPI document as served, rendered once when the router is built.
#[derive(Clone)]
struct ApiDocument(Arc<str>);

/// Every route with its description; body limits are layers, so the document does not depend on
/// them.
fn routes(limits: BodyLimits) -> OpenApiRouter<Arc<Node>> {
    let (schemas, paths, invoke) = routes!(functions::invoke);
    let invoke = invoke.layer(DefaultBodyLimit::max(limits.max_input));
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(node_info))
        .routes(routes!(members))
        .routes(routes!(create_join_token))
        .routes(routes!(functions::list, functions::deploy))
        .routes(routes!(functions::validate))
        .routes(routes!(functions::info, functions::remove))
        .routes(routes!(functions::dependencies))
        .routes(routes!(functions::yank))
        .routes(routes!(functions::audit))
        .routes((schemas, paths, invoke))
        .routes(routes!(functions::test))
        .routes(routes!(stats::rollback))
        .routes(routes!(stats::stats))
        .routes(routes!(ingredients::list))
        .routes(routes!(ingredients::show))
        .routes(routes!(ingredients::render_recipe))
        .routes(routes!(chef::run))
        .routes(routes!(secrets::set))
        .routes(routes!(traces::recent))
        .routes(routes!(traces::trace))
        .routes(routes!(roi::mesh))
        .routes(routes!(roi::function))
        // Outside the invoke route's own limit, so that one wins there.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The API's routes.
pub fn router(
    node: Arc<Node>,
    kitchen: Arc<Kitchen>,
    chef: chef::ChefSlot,
    limits: BodyLimits,
) -> Router {
    let (router, document) = routes(limits).split_for_parts();
    let document = openapi::finish(document);
    // Serialising a document of plain maps and strings cannot fail.
    let text = document.to_pretty_json().unwrap_or_default();
    router
        .layer(Extension(ApiDocument(text.into())))
        .layer(Extension(limits))
        .layer(Extension(chef))
        .layer(Extension(kitchen))
        .with_state(node)
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    kitchen: Arc<Kitchen>,
    chef: chef::ChefSlot,
    limits: BodyLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, kitchen, chef, limits))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Liveness: `ok` while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process serves", body = String, content_type = "text/plain", example = "ok")),
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the membership layer answers.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "`not_ready`: membership does not answer yet", body = ErrorBody),
    ),
)]
async fn readyz(State(node): State<Arc<Node>>) -> Result<Json<Readiness>, ApiError> {
    match node.members().await {
        Ok(members) => Ok(Json(Readiness {
            ready: true,
            members: members.len(),
        })),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            e.to_string(),
        )),
    }
}

/// This OpenAPI document (no token needed: it describes the API, not the mesh).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)),
)]
async fn openapi_json(Extension(document): Extension<ApiDocument>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.to_string(),
    )
        .into_response()
}

/// This node: id, name, mesh, addresses, generation, whether it holds the CA.
#[utoipa::path(
    get,
    path = "/v1/node",
    operation_id = "node",
    tag = "mesh",
    security(("bearer" = ["reader"])),
    responses((status = 200, description = "This node", body = NodeInfo)),
)]
async fn node_info(
    State(node): State<Arc<Node>>,
    caller: Caller,
) -> Result<Json<NodeInfo>, ApiError> {
    caller.require("reader")?;
    let s = node.settings();
    let identity = node.identity();
    Ok(Json(NodeInfo {
        id: s.node_id.clone(),
        name: s.name.clone(),
        mesh_id: s.mesh_id.clone(),
        mesh_name: s.mesh_name.clone(),
        addr: identity.addr.clone(),
        api: identity.api.clone(),
        generation: identity.generation,
        holds_ca: node.holds_ca(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }))
}

/// The membership as this node sees it (what `klf members --json` prints).
#[utoipa::path(
    get,
    path = "/v1/members",
    operation_id = "members",
    tag = "mesh",
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "Every member, this node included", body = Vec<schemas::MemberView>),
        (status = 503, description = "`unavailable`: membership does not answer", body = ErrorBody),
    ),
)]
async fn members(
    State(node): State<Arc<Node>>,
    caller: Caller,
) -> Result<Json<Vec<klf_actors::mesh::MemberView>>, ApiError> {
    caller.require("reader")?;
    let members = node.members().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(members))
}

/// Issue a one-time join token (only the node holding the mesh CA can).
#[utoipa::path(
    post,
    path = "/v1/join-tokens",
    operation_id = "create_join_token",
    tag = "mesh",
    security(("bearer" = ["admin"])),
    request_body(content = Option<JoinTokenRequest>, description = "Optional: without a body the token lives 600 s"),
    responses(
        (status = 201, description = "The token", body = JoinToken),
        (status = 400, description = "`bad_request`: ttl_secs out of range, or a malformed body", body = ErrorBody),
        (status = 409, description = "`cannot_issue`: this node does not hold the CA key", body = ErrorBody),
    ),
)]
async fn create_join_token(
    State(node): State<Arc<Node>>,
    caller: Caller,
    body: Option<ApiJson<JoinTokenRequest>>,
) -> Result<(StatusCode, Json<JoinToken>), ApiError> {
    caller.require("admin")?;
    let ttl_secs = body
        .map_or_else(JoinTokenRequest::default, |ApiJson(b)| b)
        .ttl_secs;
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
        Json(JoinToken {
            token: token.encode(),
            mesh_id: token.mesh_id,
            seed: token.seed,
            expires_at: token.expires_at,
        }),
    ))
}
