//! The OpenAPI 3.1 document, generated from the handler types.
//!
//! Handlers document their own success and domain errors; [`ProblemResponses`]
//! adds the errors every operation shares (401 from the bearer extractor,
//! 400/415/422 from the JSON extractor, 500), all as `application/problem+json`.
//! The document is committed as docs/openapi.json; tests/tests/openapi.rs
//! keeps the two equal.

use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(title = "paynode", description = "Payment intake, PSP outcomes, ledger balances and component admin. \
        Every error is an RFC 9457 problem (`application/problem+json`)."),
    paths(
        super::payments::create,
        super::payments::get,
        super::refunds::create,
        super::refunds::get,
        super::webhooks::receive,
        super::balances::seller_balances,
        super::admin::list_plugins,
        super::admin::push_plugin,
        super::admin::activate_plugin,
        super::admin::rollback_plugin,
        super::admin::resolve_review,
    ),
    components(schemas(super::problem::Problem)),
    modifiers(&BearerAuth, &ProblemResponses),
    security(("bearer" = [])),
    tags(
        (name = "payments", description = "Payment intake and status"),
        (name = "refunds", description = "Refunds of succeeded payment orders"),
        (name = "webhooks", description = "PSP notifications, verified by the active adapter (no bearer token)"),
        (name = "ledger", description = "Seller balances"),
        (name = "admin", description = "Component registry and review resolution (role ADMIN)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with roles (`paynode token --role ...`); \
                         issuer, audience and expiry are checked",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds the error responses shared by every operation, unless the handler
/// documents that status itself.
struct ProblemResponses;

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

fn add_shared_errors(operation: &mut Operation) {
    let mut shared = vec![(
        "500",
        "Internal error; details are in the node's logs, never in the body",
    )];
    if operation.security.is_some() {
        shared.push(("401", "Missing, malformed, expired or invalid bearer token"));
    }
    if operation.request_body.is_some() {
        shared.push(("400", "The body is not valid JSON"));
        shared.push(("415", "Content-Type is not application/json"));
        shared.push((
            "422",
            "The JSON does not match the request schema (missing or unknown field, wrong type)",
        ));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in shared {
        responses
            .entry(status.to_string())
            .or_insert_with(|| problem_response(description));
    }
}

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                add_shared_errors(operation);
            }
        }
    }
}

pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes")
}

pub async fn serve() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}
