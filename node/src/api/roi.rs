//! `/v1/roi`: cost, value and ROI of the mesh (`GET /v1/roi`) or of one function
//! (`GET /v1/roi/{name}`), as [`klf_actors::ledger::Roi`] JSON.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::chef::roi::RoiError;
use klf_actors::ledger::Roi;

use super::schemas;
use super::types::ErrorBody;
use super::{ApiError, Caller};

fn roi_error(e: RoiError) -> ApiError {
    match e {
        RoiError::UnknownFunction(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        RoiError::Ledger(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger", e.to_string())
        }
    }
}

/// Cost, value and ROI of the whole mesh, each figure with its basis.
#[utoipa::path(
    get,
    path = "/v1/roi",
    operation_id = "mesh_roi",
    tag = "roi",
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The mesh's ROI", body = schemas::Roi),
        (status = 500, description = "`ledger`: the ledger cannot be read", body = ErrorBody),
    ),
)]
pub async fn mesh(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
) -> Result<Json<Roi>, ApiError> {
    caller.require("reader")?;
    kitchen.roi(None).await.map(Json).map_err(roi_error)
}

/// Cost, value and ROI of one function, every version.
#[utoipa::path(
    get,
    path = "/v1/roi/{name}",
    operation_id = "function_roi",
    tag = "roi",
    params(("name" = String, Path, description = "The function's NAME")),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The function's ROI", body = schemas::Roi),
        (status = 404, description = "`not_found`: no such function", body = ErrorBody),
        (status = 500, description = "`ledger`: the ledger cannot be read", body = ErrorBody),
    ),
)]
pub async fn function(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Roi>, ApiError> {
    caller.require("reader")?;
    kitchen.roi(Some(&name)).await.map(Json).map_err(roi_error)
}
