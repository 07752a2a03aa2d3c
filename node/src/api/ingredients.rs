//! `/v1/ingredients`: the ingredients this node loaded, and rendering a recipe into a package.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::ingredients::render::render;
use klf_actors::ingredients::{Ingredient, Kind, Library, LoadError, RenderError, RenderRequest};
use serde::{Deserialize, Serialize};

use super::{ApiError, Caller};

/// One ingredient in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngredientSummary {
    pub name: String,
    pub kind: String,
    pub description: String,
    pub file: String,
    /// `shipped` or `user`.
    pub source: String,
    /// The file of the ingredient this one overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<String>,
}

/// The answer of `GET /v1/ingredients`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngredientListing {
    pub ingredients: Vec<IngredientSummary>,
    /// Files that did not load: `{file, field?, message}`.
    pub errors: Vec<serde_json::Value>,
    /// The user folders, in load order.
    pub folders: Vec<String>,
}

fn summary(i: &Ingredient) -> IngredientSummary {
    IngredientSummary {
        name: i.name.clone(),
        kind: i.kind.to_string(),
        description: i.description.clone(),
        file: i.file.clone(),
        source: match i.origin {
            klf_actors::ingredients::Origin::Shipped => "shipped".into(),
            klf_actors::ingredients::Origin::User { .. } => "user".into(),
        },
        overrides: i.overrides.clone(),
    }
}

/// The listing of a library (shared with the CLI's local mode).
pub fn listing(library: &Library, kind: Option<Kind>) -> IngredientListing {
    IngredientListing {
        ingredients: library.list(kind).map(summary).collect(),
        errors: library
            .errors()
            .iter()
            .map(|e| match e {
                klf_actors::ingredients::IngredientError::Field {
                    file,
                    field,
                    message,
                } => serde_json::json!({"file": file, "field": field, "message": message, "text": e.to_string()}),
                klf_actors::ingredients::IngredientError::File { file, message } => {
                    serde_json::json!({"file": file, "message": message, "text": e.to_string()})
                }
            })
            .collect(),
        folders: library.folders().to_vec(),
    }
}

/// An ingredient in full: its summary and its content.
pub fn detail(i: &Ingredient) -> serde_json::Value {
    let mut view = serde_json::to_value(summary(i)).unwrap_or_default();
    view["content"] = i.body.to_json();
    view
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    kind: Option<String>,
}

/// Parses a `--kind` / `?kind=` value.
pub fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text).ok_or_else(|| {
        format!(
            "{text:?} is not an ingredient kind (known: {})",
            Kind::ALL.map(|k| k.as_str()).join(", ")
        )
    })
}

/// `GET /v1/ingredients[?kind=K]`.
pub async fn list(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let kind = query
        .kind
        .as_deref()
        .map(parse_kind)
        .transpose()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m))?;
    Ok(Json(listing(kitchen.ingredients(), kind)).into_response())
}

fn load_error(e: LoadError) -> ApiError {
    match e {
        LoadError::NotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        LoadError::NotARecipe { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "not_a_recipe", e.to_string())
        }
    }
}

/// `GET /v1/ingredients/{name}`.
pub async fn show(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let ingredient = kitchen.ingredients().find(&name).map_err(load_error)?;
    Ok(Json(detail(ingredient)).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct RenderBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    set: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `POST /v1/ingredients/{name}/render` `{"name"?, "set"?: {param: value}}`: the package's files.
pub async fn render_recipe(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(recipe): Path<String>,
    body: Option<Json<RenderBody>>,
) -> Result<Response, ApiError> {
    caller.require("reader")?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let request = RenderRequest {
        recipe,
        name: body.name,
        set: body.set,
    };
    let rendered = render(kitchen.ingredients(), &request).map_err(|e| match e {
        RenderError::Load(e) => load_error(e),
        other => ApiError::new(StatusCode::BAD_REQUEST, "render_failed", other.to_string()),
    })?;
    Ok(Json(rendered).into_response())
}
