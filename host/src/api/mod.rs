//! The HTTP API: `fn app(state) -> Router`, kept apart from `main` so tests
//! can call it without a socket.

pub mod admin;
pub mod auth;
pub mod balances;
pub mod openapi;
pub mod payments;
pub mod problem;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::balance_cache::BalanceCache;
use crate::components::registry::Registry;
use crate::config::Config;
use auth::Authenticator;
use problem::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    pub registry: Arc<Registry>,
    pub balance_cache: BalanceCache,
    /// Group commit for `POST /api/v1/payments`.
    pub intake: crate::intake::Intake,
}

/// Component uploads (base64 wasm + fixtures) get a larger body limit.
const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;

pub fn app(state: AppState) -> Router {
    let body_limit = state.config.http.body_limit_bytes;
    let timeout = Duration::from_millis(state.config.http.request_timeout_ms);
    Router::new()
        .route("/api/v1/payments", post(payments::create))
        .route("/api/v1/payments/{id}", get(payments::get))
        .route(
            "/api/v1/sellers/{seller_id}/balances",
            get(balances::seller_balances),
        )
        .route(
            "/api/v1/admin/plugins",
            get(admin::list_plugins)
                .post(admin::push_plugin)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route(
            "/api/v1/admin/plugins/{slot}/activate",
            post(admin::activate_plugin),
        )
        .route(
            "/api/v1/admin/plugins/{slot}/rollback",
            post(admin::rollback_plugin),
        )
        .route(
            "/api/v1/admin/payment-orders/{id}/resolve",
            post(admin::resolve_review),
        )
        .route("/api-docs/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn(track))
        // Enforced by the body extractors, so an oversized body is a 413 problem+json.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(timeout, deadline))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn ready(State(state): State<AppState>) -> Response {
    let db = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    let components = state.registry.snapshot().len() == 3;
    if db && components {
        "ready".into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("database: {db}, components loaded: {components}"),
        )
        .into_response()
    }
}

/// A request past its deadline is dropped (an open database transaction
/// rolls back with it) and answered 503 problem+json, like every other
/// error. Retrying with the same Idempotency-Key is safe either way.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request-timeout",
            format!(
                "no answer within {} ms; retry with the same Idempotency-Key",
                timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Request metrics by matched route (never by raw path: ids would explode
/// the label set).
async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::http_request(&route, &method, response.status().as_u16(), started);
    response
}
