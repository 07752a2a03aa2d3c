//! `/v1/traces`: the spans every member keeps in its ring (`klf up --trace-buffer`), gathered over
//! KLF, so a trace can be read without a collector.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use klf_actors::node::Node;
use klf_actors::router::trace_ring::{self, TraceQuery};

use super::types::{ErrorBody, TraceList, TraceView, TracesQuery};
use super::{ApiError, ApiQuery, Caller};

/// Most traces one list may hold.
const MAX_TRACES: usize = 1000;

/// The most recent traces the members keep, newest first.
#[utoipa::path(
    get,
    path = "/v1/traces",
    operation_id = "recent_traces",
    tag = "traces",
    params(TracesQuery),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "Recent traces, newest first", body = TraceList),
        (status = 400, description = "`bad_request`: the query string is not valid", body = ErrorBody),
    ),
)]
pub async fn recent(
    State(node): State<Arc<Node>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TracesQuery>,
) -> Result<Json<TraceList>, ApiError> {
    caller.require("reader")?;
    let query = TraceQuery {
        trace_id: None,
        function: query.function,
        errors: query.errors,
        limit: query.limit.unwrap_or(20).clamp(1, MAX_TRACES),
    };
    let (traces, missing) = node.recent_traces(&query).await;
    Ok(Json(TraceList { traces, missing }))
}

/// One trace's spans from every member that still keeps them, as a waterfall.
#[utoipa::path(
    get,
    path = "/v1/traces/{trace_id}",
    operation_id = "trace",
    tag = "traces",
    params(("trace_id" = String, Path, description = "32 hex digits (as `x-klf-trace-id` of an invoke answers)")),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The trace's spans, depth-first", body = TraceView),
        (status = 400, description = "`bad_request`: not a trace id", body = ErrorBody),
        (status = 404, description = "`unknown_trace`: no member keeps a span of it (never recorded, or pushed out of every ring)", body = ErrorBody),
    ),
)]
pub async fn trace(
    State(node): State<Arc<Node>>,
    caller: Caller,
    Path(trace_id): Path<String>,
) -> Result<Json<TraceView>, ApiError> {
    caller.require("reader")?;
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{trace_id:?} is not a trace id: it has 32 hex digits"),
        ));
    }
    let trace_id = trace_id.to_ascii_lowercase();
    let gathered = node.trace(&trace_id).await;
    if gathered.spans.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_trace",
            format!(
                "no member keeps a span of trace {trace_id}: it was not recorded (klf up \
                 --trace-buffer 0), or newer spans pushed it out of every node's ring"
            ),
        ));
    }
    Ok(Json(TraceView {
        trace_id,
        rows: trace_ring::waterfall(&gathered.spans),
        missing: gathered.missing,
    }))
}
