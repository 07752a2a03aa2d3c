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
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Caller};

/// Longest request text accepted.
const MAX_REQUEST_CHARS: usize = 4000;

/// The body of `POST /v1/chef`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChefBody {
    pub request: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub deploy: bool,
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Agents to run on other nodes: role (e.g. `code-validator`) → node name.
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
}

/// The Chef of this node, if it runs one.
pub type ChefSlot = Option<Arc<Chef>>;

/// `POST /v1/chef`.
pub async fn run(
    State(_node): State<Arc<Node>>,
    Extension(chef): Extension<ChefSlot>,
    caller: Caller,
    body: Result<Json<ChefBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require("admin")?;
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not a chef request: {e}"),
        )
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
    let options = ChefOptions {
        provider,
        deploy: body.deploy,
        replicas: body.replicas.unwrap_or(1).clamp(1, 64),
        placement,
        ..ChefOptions::default()
    };
    let (events, mut receive) = tokio::sync::mpsc::unbounded_channel::<StageEvent>();
    let (lines, out) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (finished, result) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // `events` is dropped when the run returns, which ends the forwarding below.
        let _ = finished.send(chef.run(&request, &options, Some(events)).await);
    });
    tokio::spawn(async move {
        let line = |value: serde_json::Value| format!("{value}\n");
        while let Some(event) = receive.recv().await {
            if lines
                .send(line(json!({ "type": "stage", "event": event })))
                .is_err()
            {
                return;
            }
        }
        let last = match result.await {
            Ok(Ok(run)) => json!({ "type": "run", "run": run }),
            Ok(Err(error)) => json!({ "type": "error", "message": error.to_string() }),
            Err(_) => json!({ "type": "error", "message": "the chef stopped during the run" }),
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
