//! The HTTP API: `fn app(state) -> Router`, kept apart from `main` so tests
//! can call it without a socket, and `fn ops_app(state)` for the operations
//! listener (`ops.listen`): `/metrics` and the detailed readiness, which a
//! public listener then no longer serves.

pub mod admin;
pub mod auth;
pub mod balances;
pub mod openapi;
pub mod payments;
pub mod problem;
pub mod refunds;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::balance_cache::BalanceCache;
use crate::components::registry::Registry;
use crate::config::Config;
use crate::health::Dependencies;
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
    pub dependencies: Dependencies,
}

/// What the operations endpoints need; a part of [`AppState`] too, so the
/// public listener can serve them when there is no ops listener.
#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub metrics: PrometheusHandle,
    pub registry: Arc<Registry>,
    pub dependencies: Dependencies,
}

impl FromRef<AppState> for OpsState {
    fn from_ref(state: &AppState) -> OpsState {
        OpsState {
            pool: state.pool.clone(),
            metrics: state.metrics.clone(),
            registry: state.registry.clone(),
            dependencies: state.dependencies.clone(),
        }
    }
}

/// Component uploads (base64 wasm + fixtures) get a larger body limit.
const MAX_UPLOAD_BYTES: usize = 16 * 1024 * 1024;

pub fn app(state: AppState) -> Router {
    let body_limit = state.config.http.body_limit_bytes;
    let timeout = Duration::from_millis(state.config.http.request_timeout_ms);
    // With an ops listener the public one keeps a readiness without details
    // (what is down is for operators) and serves no metrics.
    let ops_elsewhere = state.config.ops.listen.is_some();
    let router = Router::new()
        .route("/api/v1/payments", post(payments::create))
        .route("/api/v1/payments/{id}", get(payments::get))
        .route("/api/v1/payment-orders/{id}/refunds", post(refunds::create))
        .route("/api/v1/refunds/{id}", get(refunds::get))
        .route("/api/v1/webhooks/{adapter}", post(webhooks::receive))
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
        .route("/health/live", get(|| async { "ok" }));
    let router = if ops_elsewhere {
        router.route("/health/ready", get(ready_brief))
    } else {
        router
            .route("/metrics", get(metrics))
            .route("/health/ready", get(ready))
    };
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn(track))
        // Enforced by the body extractors, so an oversized body is a 413 problem+json.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(timeout, deadline))
        .with_state(state)
}

/// The operations listener: metrics and probes, nothing else.
pub fn ops_app(state: OpsState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            deadline,
        ))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> String {
    state.metrics.render()
}

/// Whether Postgres, the broker and Redis answer now and every slot has a
/// component.
async fn readiness(state: &OpsState) -> (bool, String) {
    let deps = state.dependencies.check().await;
    let components = state.registry.snapshot().len() == 3;
    let detail = format!(
        "database: {}, broker: {}, redis: {}, components loaded: {components}",
        deps.database, deps.broker, deps.redis
    );
    (deps.all_up() && components, detail)
}

async fn ready(State(state): State<OpsState>) -> Response {
    match readiness(&state).await {
        (true, _) => "ready".into_response(),
        (false, detail) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail).into_response()
        }
    }
}

/// Readiness on the public listener when an ops listener has the details.
async fn ready_brief(State(state): State<OpsState>) -> Response {
    match readiness(&state).await {
        (true, _) => "ready".into_response(),
        (false, _) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "not ready").into_response()
        }
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

/// Request metrics by route template (never the raw path: ids would
/// explode the label set, and a client could mint series at will) and by a
/// closed set of methods.
async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::http_request(&route, method, response.status().as_u16(), started);
    response
}

/// The method as a label: the standard ones by name, anything a client
/// invents (methods are free-form tokens) as "other".
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_are_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::TRACE), "other");
        let invented = Method::from_bytes(b"X-ATTACKER-123").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
