//! `POST /v1/chef`: runs a request through the Chef on this node and streams its progress as
//! NDJSON — one `{"type":"stage",…}` line per stage start and end, then `{"type":"run","run":…}`
//! with the whole run (or `{"type":"error",…}`), so a client can show stages as they happen.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use klf_actors::chef::messages::AgentType;
use klf_actors::chef::{Chef, ChefOptions, StageEvent};
use klf_actors::node::Node;

use super::types::{ChefRequest, ChefStreamLine, ErrorBody};
use super::{ApiError, Caller};

/// Longest request text accepted.
const MAX_REQUEST_CHARS: usize = 4000;
/// Longest deadline a run may ask for (an hour).
const MAX_DEADLINE_MS: u64 = 3_600_000;

/// The Chef of this node, if it runs one.
pub type ChefSlot = Option<Arc<Chef>>;

/// Run a plain-language request through this node's Chef, streaming each stage as it happens.
///
/// The answer is NDJSON: one `{"type":"stage","event":…}` line per stage start and end, then one
/// `{"type":"run","run":…}` line with the whole run (its outcome: `deployed`, `built`,
/// `no-match`, `failed` with reasons), or `{"type":"error","message":…}` if the run could not
/// finish.
#[utoipa::path(
    post,
    path = "/v1/chef",
    operation_id = "chef",
    tag = "chef",
    request_body = ChefRequest,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "NDJSON: each line is one `ChefStreamLine`", body = ChefStreamLine, content_type = "application/x-ndjson"),
        (status = 400, description = "`bad_request` (empty or over-long request, unknown agent role, malformed body), `unknown_provider`", body = ErrorBody),
        (status = 503, description = "`no_chef`: this node runs no Chef", body = ErrorBody),
    ),
)]
pub async fn run(
    State(_node): State<Arc<Node>>,
    Extension(chef): Extension<ChefSlot>,
    caller: Caller,
    body: Result<Json<ChefRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require("admin")?;
    let Json(body) = body.map_err(|e| {
        // A body over the limit is refused like everywhere else; any other refusal keeps the
        // Chef's 400, which names the field at fault.
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::json_rejection(e)
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body is not a chef request: {e}"),
            )
        }
    })?;
    let chef = chef.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_chef",
            "this node runs no chef",
        )
    })?;
    let request = body.request.trim().to_string();
    if request.is_empty() || request.chars().count() > MAX_REQUEST_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`request` must be 1 to {MAX_REQUEST_CHARS} characters of plain language"),
        ));
    }
    let mut placement = BTreeMap::new();
    for (role, node) in body.placement {
        let parsed = AgentType::parse(&role).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "no agent role {role:?} (roles: {})",
                    AgentType::ALL.map(AgentType::as_str).join(", ")
                ),
            )
        })?;
        placement.insert(parsed, node);
    }
    let provider = body.provider.unwrap_or_else(|| "offline".into());
    if !chef.providers().contains(&provider) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_provider",
            format!(
                "this node has no {provider:?} provider (available: {}); openai needs KLF_MODEL_BASE_URL on the node, replay needs KLF_CHEF_REPLAY",
                chef.providers().join(", ")
            ),
        ));
    }
    if let Some(stage) = body
        .max_tokens
        .keys()
        .find(|stage| !["interpret", "write-tests", "generate"].contains(&stage.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("max_tokens: no stage {stage:?} (stages: interpret, write-tests, generate)"),
        ));
    }
    if body.max_tokens.values().any(|n| *n == 0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "max_tokens must be at least 1",
        ));
    }
    let options = ChefOptions {
        provider,
        deploy: body.deploy,
        replicas: body.replicas.unwrap_or(1).clamp(1, 64),
        placement,
        deadline_ms: body.deadline_ms.map(|ms| ms.clamp(1, MAX_DEADLINE_MS)),
        token_budget: body.token_budget,
        max_tokens: body.max_tokens,
        fresh: body.fresh,
        create_secrets: body.create_secrets,
        update: body.update,
        perf: body.perf.map(Into::into).unwrap_or_default(),
    };
    let (events, mut receive) = tokio::sync::mpsc::unbounded_channel::<StageEvent>();
    let (lines, out) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (finished, result) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // `events` is dropped when the run returns, which ends the forwarding below.
        let _ = finished.send(chef.run(&request, &options, Some(events)).await);
    });
    tokio::spawn(async move {
        // Serialising these plain structs cannot fail; an empty line would be skipped by readers.
        let line = |value: ChefStreamLine| {
            let mut text = serde_json::to_string(&value).unwrap_or_default();
            text.push('\n');
            text
        };
        while let Some(event) = receive.recv().await {
            if lines.send(line(ChefStreamLine::Stage { event })).is_err() {
                return;
            }
        }
        let last = match result.await {
            Ok(Ok(run)) => ChefStreamLine::Run { run: Box::new(run) },
            Ok(Err(error)) => ChefStreamLine::Error {
                message: error.to_string(),
            },
            Err(_) => ChefStreamLine::Error {
                message: "the chef stopped during the run".into(),
            },
        };
        let _ = lines.send(line(last));
    });
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        out.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), out))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
