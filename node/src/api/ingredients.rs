//! `/v1/ingredients`: the ingredients this node loaded, and rendering a recipe into a package.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use klf_actors::chef::kitchen::Kitchen;
use klf_actors::ingredients::render::render;
use klf_actors::ingredients::{
    Ingredient, IngredientError, Kind, Library, LoadError, RenderError, RenderRequest,
    RenderedPackage,
};

use super::schemas;
use super::types::{
    ErrorBody, IngredientDetail, IngredientListQuery, IngredientListing, IngredientLoadError,
    IngredientSummary, RenderRecipeRequest,
};
use super::{ApiError, ApiJson, ApiQuery, Caller};

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
                IngredientError::Field {
                    file,
                    field,
                    message,
                } => IngredientLoadError {
                    file: file.clone(),
                    field: Some(field.clone()),
                    message: message.clone(),
                    text: e.to_string(),
                },
                IngredientError::File { file, message } => IngredientLoadError {
                    file: file.clone(),
                    field: None,
                    message: message.clone(),
                    text: e.to_string(),
                },
            })
            .collect(),
        folders: library.folders().to_vec(),
    }
}

/// An ingredient in full: its summary and its content.
pub fn detail(i: &Ingredient) -> IngredientDetail {
    IngredientDetail {
        summary: summary(i),
        content: i.body.to_json(),
    }
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

/// The ingredients this node loaded, and the files that failed to load (with file and field).
#[utoipa::path(
    get,
    path = "/v1/ingredients",
    operation_id = "list_ingredients",
    tag = "ingredients",
    params(IngredientListQuery),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The listing", body = IngredientListing),
        (status = 400, description = "`bad_request`: not an ingredient kind", body = ErrorBody),
    ),
)]
pub async fn list(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<IngredientListQuery>,
) -> Result<Json<IngredientListing>, ApiError> {
    caller.require("reader")?;
    let kind = query
        .kind
        .as_deref()
        .map(parse_kind)
        .transpose()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m))?;
    Ok(Json(listing(kitchen.ingredients(), kind)))
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

/// One ingredient in full.
#[utoipa::path(
    get,
    path = "/v1/ingredients/{name}",
    operation_id = "get_ingredient",
    tag = "ingredients",
    params(("name" = String, Path, description = "The ingredient's name")),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "Its summary and content", body = IngredientDetail),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn show(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<IngredientDetail>, ApiError> {
    caller.require("reader")?;
    let ingredient = kitchen.ingredients().find(&name).map_err(load_error)?;
    Ok(Json(detail(ingredient)))
}

/// Render a recipe into a package's files (what `klf fn deploy` takes once written out).
#[utoipa::path(
    post,
    path = "/v1/ingredients/{name}/render",
    operation_id = "render_recipe",
    tag = "ingredients",
    params(("name" = String, Path, description = "The recipe's name")),
    request_body(content = Option<RenderRecipeRequest>, description = "Optional: without a body the recipe's defaults"),
    security(("bearer" = ["reader"])),
    responses(
        (status = 200, description = "The rendered package", body = schemas::RenderedPackage),
        (status = 400, description = "`not_a_recipe`, `render_failed` (names the parameter), `bad_request` (malformed body)", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not `application/json`", body = ErrorBody),
        (status = 422, description = "`bad_request`: the body's fields have the wrong types", body = ErrorBody),
    ),
)]
pub async fn render_recipe(
    Extension(kitchen): Extension<Arc<Kitchen>>,
    caller: Caller,
    Path(recipe): Path<String>,
    body: Option<ApiJson<RenderRecipeRequest>>,
) -> Result<Json<RenderedPackage>, ApiError> {
    caller.require("reader")?;
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let request = RenderRequest {
        recipe,
        name: body.name,
        set: body.set,
    };
    let rendered = render(kitchen.ingredients(), &request).map_err(|e| match e {
        RenderError::Load(e) => load_error(e),
        other => ApiError::new(StatusCode::BAD_REQUEST, "render_failed", other.to_string()),
    })?;
    Ok(Json(rendered))
}
