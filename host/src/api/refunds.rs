//! `POST /api/v1/payment-orders/{id}/refunds` and `GET /api/v1/refunds/{id}`.
//!
//! A refund request is decided in one transaction: the Idempotency-Key is
//! locked and triaged with intake's rules ([`crate::intake::key`]), the
//! order row is locked, and only then are the order's status, its adapter's
//! contract version and Σ refunds ≤ captured checked, so two concurrent
//! requests can never refund more than was captured. The refund, its
//! `RefundRequested` outbox event and the key's record commit together; the
//! PSP is called by the refund executor stage, never on the request path.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{role, Principal};
use super::payments::{idempotency_key, trace_id_from};
use super::problem::{ApiError, Json, Problem};
use super::AppState;
use crate::components::runtime::NO_REFUNDS;
use crate::components::Slot;
use crate::domain::events::Envelope;
use crate::domain::money::Money;
use crate::domain::payment::OrderStatus;
use crate::domain::refund::{refund_idempotency_key, RefundRequested, RefundStatus};
use crate::intake::key::{self, KeyCheck};
use crate::store::payments::OrderRow;
use crate::store::refunds::{self, NewRefund, RefundRow};

/// Longest accepted refund reason.
const MAX_REASON_LEN: usize = 256;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({ "amount": { "quantity": 400, "currency": "EUR" }, "reason": "customer returned an item" }))]
pub struct CreateRefund {
    /// `quantity` > 0 in minor units, in the order's currency; with the
    /// order's other refunds (not FAILED) at most what it captured.
    pub amount: Money,
    /// 1..=256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    pub refund_id: Uuid,
    pub payment_order_id: Uuid,
    pub amount: Money,
    pub reason: String,
    pub status: RefundStatus,
    pub psp_reference: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<RefundRow> for RefundView {
    fn from(row: RefundRow) -> Self {
        RefundView {
            refund_id: row.refund_id,
            payment_order_id: row.payment_order_id,
            amount: Money::new(row.amount_minor, &row.currency),
            reason: row.reason,
            status: row.status,
            psp_reference: row.psp_reference,
            failure_reason: row.failure_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Refund a succeeded payment order, fully or partly.
#[utoipa::path(post, path = "/api/v1/payment-orders/{id}/refunds", tag = "refunds", operation_id = "create_refund",
    request_body = CreateRefund,
    params(("id" = Uuid, Path, description = "Payment order id"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 128, pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = "Required, 1..=128 characters; same key + same body replays the first answer")),
    responses(
        (status = 202, description = "Accepted (or the replay of an earlier answer to the same key and body)", body = RefundView,
            headers(("Location" = String, description = "The refund's URL"))),
        (status = 400, description = "Invalid JSON, a broken rule, or a missing or invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role payment:write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown payment order, or another client's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not SUCCEEDED, or the same key is still in flight (with Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Over-refund (with the order's other refunds more than it captured), the order's adapter version does not support refunds, the body does not match the schema, or the Idempotency-Key was used with a different request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<CreateRefund>,
) -> Result<Response, ApiError> {
    principal.require(role::PAYMENT_WRITE)?;
    let trace_id = trace_id_from(&headers);
    let result = refund(&state, &principal, &id, &headers, &trace_id, body).await;
    match &result {
        Ok(_) => crate::metrics::refund("requested"),
        Err(_) => crate::metrics::refund("rejected"),
    }
    result.map_err(|e| e.with_trace(&trace_id))
}

async fn refund(
    state: &AppState,
    principal: &Principal,
    id: &str,
    headers: &HeaderMap,
    trace_id: &str,
    body: CreateRefund,
) -> Result<Response, ApiError> {
    let order_id: Uuid = id
        .parse()
        .map_err(|_| ApiError::validation("payment order id must be a UUID"))?;
    let key = idempotency_key(headers)?;
    validate(&body)?;
    // The route is part of the request: a key used for a payment and then
    // for a refund is a reused key.
    let request_sha256 = hex::encode(Sha256::digest(
        format!(
            "refund\0{order_id}\0{}",
            serde_json::to_string(&body).expect("serializes")
        )
        .as_bytes(),
    ));
    let retention = state.config.intake.idempotency_retention_secs;
    let request = Request {
        order_id,
        key,
        request_sha256,
        trace_id,
        body,
    };
    // Ended on every path: a dropped transaction would keep the order's row
    // lock and the key's advisory lock until its connection is reused.
    let mut tx = state.pool.begin().await?;
    let decided = decide(state, principal, &mut tx, request, retention).await;
    let new = match decided {
        Ok(Ok(new)) => new,
        Ok(Err(replay)) => {
            tx.rollback().await?;
            return Ok(replay);
        }
        Err(error) => {
            let _ = tx.rollback().await;
            return Err(error);
        }
    };
    tx.commit().await?;
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        new.response_json,
    )
        .into_response();
    set_location(&mut response, &new.refund_id.to_string());
    Ok(response)
}

struct Request<'a> {
    order_id: Uuid,
    key: String,
    request_sha256: String,
    trace_id: &'a str,
    body: CreateRefund,
}

/// Inside the transaction: the key, then the locked order. `Ok(Err(_))` is
/// the replay of the key's first answer; `Ok(Ok(_))` the refund, written.
async fn decide(
    state: &AppState,
    principal: &Principal,
    tx: &mut sqlx::PgConnection,
    request: Request<'_>,
    retention: u64,
) -> Result<Result<NewRefund, Response>, ApiError> {
    let Request {
        order_id,
        key,
        request_sha256,
        trace_id,
        body,
    } = request;
    match key::check(tx, &principal.subject, &key, &request_sha256, retention).await? {
        KeyCheck::Fresh => {}
        KeyCheck::InFlight => {
            let mut error = ApiError::conflict(
                "request-in-flight",
                "a request with this Idempotency-Key is still being processed",
            );
            error.retry_after_secs = Some(1);
            return Err(error);
        }
        KeyCheck::Reused => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was used with a different request",
            ))
        }
        KeyCheck::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            let mut response = respond(status, &body);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(Err(response));
        }
    }
    let order = refunds::lock_order(tx, order_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no payment order {order_id}")))?;
    check_owner(state, principal, &order).await?;
    check_refundable(state, &order, &body).await?;
    let held = refunds::held(tx, order_id).await?;
    let total = held
        .checked_add(body.amount.quantity)
        .ok_or_else(|| ApiError::validation("amounts overflow"))?;
    if total > order.amount_minor {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "over-refund",
            format!(
                "refunds would total {total} of a capture of {} {} ({held} already refunded or in progress)",
                order.amount_minor, order.currency
            ),
        ));
    }
    let new = new_refund(principal, &order, key, request_sha256, trace_id, body);
    refunds::insert(tx, &new, retention).await?;
    Ok(Ok(new))
}

fn validate(body: &CreateRefund) -> Result<(), ApiError> {
    if body.amount.quantity <= 0 {
        return Err(ApiError::validation(
            "amount.quantity must be > 0 (minor units)",
        ));
    }
    let reason = body.reason.trim();
    if reason.is_empty() || body.reason.len() > MAX_REASON_LEN || body.reason.contains('\0') {
        return Err(ApiError::validation(format!(
            "reason must be 1..={MAX_REASON_LEN} characters without NUL"
        )));
    }
    Ok(())
}

/// Clients refund their own payments' orders; admins any.
async fn check_owner(
    state: &AppState,
    principal: &Principal,
    order: &OrderRow,
) -> Result<(), ApiError> {
    let payment = crate::store::payments::find_payment(&state.pool, order.payment_id)
        .await?
        .ok_or_else(|| ApiError::internal("order without its payment"))?;
    if payment.client_id != principal.subject && !principal.roles.contains(role::ADMIN) {
        return Err(ApiError::not_found(format!(
            "no payment order {}",
            order.payment_order_id
        )));
    }
    Ok(())
}

/// SUCCEEDED, same currency, and charged by an adapter whose contract has
/// refunds.
async fn check_refundable(
    state: &AppState,
    order: &OrderRow,
    body: &CreateRefund,
) -> Result<(), ApiError> {
    if order.status != OrderStatus::Succeeded {
        return Err(ApiError::conflict(
            "order-not-refundable",
            format!(
                "only a SUCCEEDED order can be refunded; this one is {}",
                order.status.as_str()
            ),
        ));
    }
    if body.amount.currency != order.currency {
        return Err(ApiError::validation(format!(
            "the refund must be in the order's currency {}",
            order.currency
        )));
    }
    let activation = order
        .adapter_activation_id
        .ok_or_else(|| ApiError::internal("succeeded order without an adapter activation"))?;
    let adapter = state
        .registry
        .activation(Slot::PspAdapter, activation)
        .await
        .map_err(ApiError::internal)?;
    if !adapter.loaded.supports_refunds() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refunds-unsupported",
            format!(
                "{NO_REFUNDS}: the order was charged with {} {} (psp-adapter 1.0.0)",
                adapter.loaded.name, adapter.loaded.version
            ),
        ));
    }
    Ok(())
}

fn new_refund(
    principal: &Principal,
    order: &OrderRow,
    key: String,
    request_sha256: String,
    trace_id: &str,
    body: CreateRefund,
) -> NewRefund {
    let refund_id = Uuid::new_v4();
    let now = Utc::now();
    let view = RefundView {
        refund_id,
        payment_order_id: order.payment_order_id,
        amount: body.amount.clone(),
        reason: body.reason.clone(),
        status: RefundStatus::Requested,
        psp_reference: None,
        failure_reason: None,
        created_at: now,
        updated_at: now,
    };
    let requested = RefundRequested {
        refund_id,
        order: order.order_ref(),
        refund_amount: body.amount.clone(),
        attempt: 1,
    };
    let event = Envelope::new(
        crate::domain::events::event_type::REFUND_REQUESTED,
        &refund_id.to_string(),
        1,
        trace_id,
        None,
        &requested,
    );
    NewRefund {
        refund_id,
        payment_order_id: order.payment_order_id,
        client_id: principal.subject.clone(),
        amount_minor: body.amount.quantity,
        currency: body.amount.currency,
        reason: body.reason,
        psp_idempotency_key: refund_idempotency_key(refund_id),
        trace_id: trace_id.to_string(),
        idempotency_key: key,
        request_sha256,
        response_json: serde_json::to_string(&view).expect("serializes"),
        event,
    }
}

fn respond(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(id) = body.get("refundId").and_then(|v| v.as_str()) {
        set_location(&mut response, id);
    }
    response
}

fn set_location(response: &mut Response, refund_id: &str) {
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/refunds/{refund_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
}

/// A refund and its status.
#[utoipa::path(get, path = "/api/v1/refunds/{id}", tag = "refunds", operation_id = "get_refund",
    params(("id" = Uuid, Path, description = "Refund id")),
    responses(
        (status = 200, description = "The refund", body = RefundView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown refund, or another client's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<RefundView>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::validation("refund id must be a UUID"))?;
    let refund = refunds::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no refund {id}")))?;
    let privileged =
        principal.roles.contains(role::FINANCE) || principal.roles.contains(role::ADMIN);
    if refund.client_id != principal.subject && !privileged {
        return Err(ApiError::not_found(format!("no refund {id}")));
    }
    Ok(axum::Json(refund.into()))
}
