//! The OpenAPI 3.1 document of the HTTP API, generated from the routes' `#[utoipa::path]`
//! descriptions and the wire types, served at `GET /v1/openapi.json` and committed as
//! `docs/openapi.json` (a test keeps the two equal).
//!
//! What every route shares is added here once rather than on each route, so it cannot drift
//! between routes: the bearer scheme, the 401/403 of every route that checks a token, and the 413
//! of every route that reads a body.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{OpenApi as _, ToSchema as _};

use super::types::ErrorBody;
use super::{MAX_BODY_BYTES, bytes_text};

/// The name of the bearer security scheme; an operation's scopes are the role it needs.
const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "KLF node API",
        description = "The HTTP API of one `klf up` node. Routes under `/v1` (and `/metrics`) need \
            `Authorization: Bearer TOKEN`; each operation's security scopes name the role the \
            token must hold (`reader`, `invoker`, `deployer`, `admin`). The admin token is in \
            `DATA_DIR/admin.token`. Every error is `{\"error\":{\"code\",\"message\"}}` (`ErrorBody`) \
            with a fitting status.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "meta", description = "This document"),
        (name = "mesh", description = "The node, its membership and join tokens"),
        (name = "functions", description = "The function registry, invocation, tests, statistics and rollback"),
        (name = "ingredients", description = "Ingredients and recipe rendering"),
        (name = "chef", description = "Requests turned into deployed functions"),
        (name = "roi", description = "Cost, value and ROI"),
        (name = "secrets", description = "Secrets functions read with ctx.secret, set on every node"),
        (name = "traces", description = "Recent spans every node keeps, gathered mesh-wide (klf trace)"),
    ),
)]
struct ApiDoc;

/// The document before any route is added: info, tags.
pub(crate) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// The whole document, as `/v1/openapi.json` serves it (the server builds it along with its
/// router; this is for the tests that compare it with the committed file and with real answers).
#[cfg(test)]
pub(crate) fn document() -> OpenApi {
    finish(
        super::routes(super::BodyLimits::default())
            .split_for_parts()
            .1,
    )
}

/// Adds what every route shares: the bearer scheme, the shared error responses, and each secured
/// operation's role in its description.
pub(crate) fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_string(),
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token: the admin token in DATA_DIR/admin.token holds every role",
                ))
                .build(),
        ),
    );
    let error = |description: String| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                        .build(),
                )
                .build(),
        )
    };
    components.responses.insert(
        "Unauthenticated".into(),
        error("`unauthenticated`: no bearer token, or an unknown or revoked one".into()),
    );
    components.responses.insert(
        "Forbidden".into(),
        error("`forbidden`: the token lacks the role this operation needs".into()),
    );
    components.responses.insert(
        "BodyTooLarge".into(),
        error(format!(
            "`body_too_large`: the body exceeds {}, the largest KLF frame (a package must fit in one to reach other nodes); fixed",
            bytes_text(MAX_BODY_BYTES)
        )),
    );
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            shared_responses(operation);
        }
    }
    doc
}

fn shared_responses(operation: &mut Operation) {
    let roles: Vec<String> = operation
        .security
        .iter()
        .flatten()
        .filter_map(|requirement| {
            serde_json::to_value(requirement)
                .ok()
                .and_then(|v| v.get(BEARER).cloned())
        })
        .filter_map(|scopes| serde_json::from_value::<Vec<String>>(scopes).ok())
        .flatten()
        .collect();
    let responses = &mut operation.responses.responses;
    if !roles.is_empty() {
        let role = roles.join(", ");
        let needs = format!("Needs a bearer token with the `{role}` role.");
        operation.description = Some(match operation.description.take() {
            Some(text) if !text.is_empty() => format!("{text}\n\n{needs}"),
            _ => needs,
        });
        responses
            .entry("401".into())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Unauthenticated")));
        responses
            .entry("403".into())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Forbidden")));
    }
    if operation.request_body.is_some() {
        responses
            .entry("413".into())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name("BodyTooLarge")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document, relative to this crate.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    #[test]
    fn openapi_document_matches_docs_openapi_json() {
        let generated = document()
            .to_pretty_json()
            .unwrap_or_else(|e| panic!("serialising the document: {e}"))
            + "\n";
        if std::env::var_os("KLF_WRITE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated)
                .unwrap_or_else(|e| panic!("writing {COMMITTED}: {e}"));
            return;
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the API the code describes; regenerate it with\n  \
             KLF_WRITE_OPENAPI=1 cargo test -p klf-node openapi\nand commit it"
        );
    }

    #[test]
    fn openapi_is_3_1_and_every_secured_operation_names_its_role() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                operations += 1;
                let public = ["/healthz", "/readyz", "/v1/openapi.json"].contains(&path.as_str());
                let roles = &op["security"][0][BEARER];
                assert_eq!(
                    roles.is_null(),
                    public,
                    "{method} {path}: security {roles} (public: {public})"
                );
                if !public {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                    assert!(op["responses"]["403"].is_object(), "{method} {path}");
                }
                if op["requestBody"].is_object() {
                    assert!(op["responses"]["413"].is_object(), "{method} {path}");
                }
                assert!(op["operationId"].is_string(), "{method} {path}");
            }
        }
        assert_eq!(operations, 28, "every route is described");
    }
}
