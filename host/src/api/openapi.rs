//! The OpenAPI 3.1 document, generated from the handler types.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "paynode", description = "Payment intake, PSP outcomes, ledger balances and component admin."),
    paths(
        super::payments::create,
        super::payments::get,
        super::balances::seller_balances,
        super::admin::list_plugins,
        super::admin::push_plugin,
        super::admin::activate_plugin,
        super::admin::rollback_plugin,
        super::admin::resolve_review,
    ),
    modifiers(&BearerAuth),
    tags((name = "payments"), (name = "ledger"), (name = "admin"))
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
                    .build(),
            ),
        );
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
