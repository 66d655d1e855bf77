//! `POST /api/v1/payments` and `GET /api/v1/payments/{id}`.
//!
//! Intake validates and builds the payment, its orders and one outbox row
//! per order in memory, has them written in one group transaction
//! ([`crate::intake`]) and answers 202 once it committed; the PSP is never
//! called on the request path.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{role, Principal};
use super::problem::{ApiError, Json, Problem};
use super::AppState;
use crate::config::HttpConfig;
use crate::domain::events::{event_type, Envelope, OrderRef};
use crate::domain::money::{is_known_currency, Money};
use crate::domain::payment::{OrderStatus, PspOutcome};
use crate::intake::Outcome;
use crate::store::intake::{NewOrder, NewPayment};
use crate::store::payments;

/// Longest accepted id (buyer, order, seller, idempotency key).
const MAX_ID_LEN: usize = 64;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "buyerId": "buyer-1",
    "orderId": "order-1",
    "totalAmount": { "quantity": 3000, "currency": "EUR" },
    "paymentOrders": [
        { "sellerId": "seller-1", "amount": { "quantity": 1000, "currency": "EUR" } },
        { "sellerId": "seller-2", "amount": { "quantity": 2000, "currency": "EUR" } }
    ]
}))]
pub struct CreatePayment {
    /// 1..=64 bytes, no '.'.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^.\x00]+$")]
    pub buyer_id: String,
    /// The shop's order id; one payment per (client, orderId). 1..=64 bytes, no '.'.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^.\x00]+$")]
    pub order_id: String,
    /// `quantity` > 0 in minor units; `currency` a supported ISO-4217 code.
    pub total_amount: Money,
    /// One per seller (at most `http.max_payment_orders`, 50 by default);
    /// amounts are in the payment's currency and sum to `totalAmount`.
    #[schema(min_items = 1)]
    pub payment_orders: Vec<CreatePaymentOrder>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePaymentOrder {
    /// 1..=64 of [A-Za-z0-9_-]; GLOBAL is reserved; unique within a payment.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub seller_id: String,
    pub amount: Money,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub buyer_id: String,
    pub order_id: String,
    pub total_amount: Money,
    /// PENDING, SUCCEEDED, FAILED, PARTIALLY_SUCCEEDED, REQUIRES_REVIEW or PARKED.
    pub status: String,
    pub trace_id: String,
    pub created_at: DateTime<Utc>,
    pub payment_orders: Vec<PaymentOrderView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentOrderView {
    pub payment_order_id: Uuid,
    pub seller_id: String,
    pub amount: Money,
    pub status: OrderStatus,
    pub psp_reference: Option<String>,
    pub failure_reason: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The latest PSP outcome, if any call finished.
    pub latest_outcome: Option<PspOutcome>,
    pub attempts: Vec<AttemptView>,
    /// The order's refunds, oldest first.
    pub refunds: Vec<super::refunds::RefundView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt: i32,
    pub outcome: Option<PspOutcome>,
    pub latency_ms: Option<i64>,
    /// sha256 of the adapter component that made the call.
    pub component_sha256: String,
    pub settled_by_status: bool,
    pub claimed_at: DateTime<Utc>,
}

fn validate(body: &CreatePayment, limits: &HttpConfig) -> Result<(), ApiError> {
    let max_orders = limits.max_payment_orders;
    // NUL is refused: PostgreSQL text cannot store it (it was a 500).
    let id_ok = |s: &str| {
        !s.trim().is_empty() && s.len() <= MAX_ID_LEN && !s.contains('.') && !s.contains('\0')
    };
    if !id_ok(&body.buyer_id) || !id_ok(&body.order_id) {
        return Err(ApiError::validation(format!(
            "buyerId and orderId must be 1..={MAX_ID_LEN} characters without '.' or NUL"
        )));
    }
    let currency = &body.total_amount.currency;
    if !is_known_currency(currency) {
        return Err(ApiError::validation(format!(
            "unknown currency {currency:?}"
        )));
    }
    if body.total_amount.quantity <= 0 {
        return Err(ApiError::validation(
            "totalAmount.quantity must be > 0 (minor units)",
        ));
    }
    // Caps keep every later sum (balances, journals) far from i64 overflow.
    if body.total_amount.quantity > limits.max_payment_amount_minor {
        return Err(ApiError::validation(format!(
            "totalAmount.quantity must be <= {} (minor units)",
            limits.max_payment_amount_minor
        )));
    }
    if body.payment_orders.is_empty() || body.payment_orders.len() > max_orders {
        return Err(ApiError::validation(format!(
            "paymentOrders must have 1..={max_orders} entries"
        )));
    }
    let mut sellers = std::collections::HashSet::new();
    let mut sum: i64 = 0;
    for order in &body.payment_orders {
        if !id_ok(&order.seller_id)
            || !order
                .seller_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::validation(
                "sellerId must be 1..=64 of [A-Za-z0-9_-]",
            ));
        }
        if order.seller_id == "GLOBAL" {
            return Err(ApiError::validation(
                "sellerId GLOBAL is reserved for platform accounts",
            ));
        }
        if !sellers.insert(order.seller_id.as_str()) {
            return Err(ApiError::validation(format!(
                "seller {} appears twice",
                order.seller_id
            )));
        }
        if order.amount.currency != *currency {
            return Err(ApiError::validation(
                "every payment order must be in the payment's currency",
            ));
        }
        if order.amount.quantity <= 0 {
            return Err(ApiError::validation(
                "every payment order amount must be > 0",
            ));
        }
        if order.amount.quantity > limits.max_order_amount_minor {
            return Err(ApiError::validation(format!(
                "every payment order amount must be <= {} (minor units)",
                limits.max_order_amount_minor
            )));
        }
        sum = sum
            .checked_add(order.amount.quantity)
            .ok_or_else(|| ApiError::validation("amounts overflow"))?;
    }
    if sum != body.total_amount.quantity {
        return Err(ApiError::validation(format!(
            "payment orders sum to {sum} but totalAmount is {}",
            body.total_amount.quantity
        )));
    }
    Ok(())
}

/// Trace id from `X-Trace-Id` or W3C `traceparent`, else a new one.
pub fn trace_id_from(headers: &HeaderMap) -> String {
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if let Some(id) = headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid(s))
    {
        return id.to_string();
    }
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        if let Some(id) = parent
            .split('-')
            .nth(1)
            .filter(|s| s.len() == 32 && valid(s))
        {
            return id.to_string();
        }
    }
    Uuid::new_v4().simple().to_string()
}

// Shares its transaction with the requests that arrived with it (see
// `crate::intake`); the doc comment below is the OpenAPI description.
/// Accept a payment: stored with its orders and outbox events in one
/// transaction; the PSP is called asynchronously.
#[utoipa::path(post, path = "/api/v1/payments", tag = "payments",
    request_body = CreatePayment,
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 128, pattern = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
        description = "Required, 1..=128 characters; same key + same body replays the first answer")),
    responses(
        (status = 202, description = "Accepted (or the replay of an earlier answer to the same key and body)", body = PaymentView,
            headers(("Location" = String, description = "The payment's URL"))),
        (status = 400, description = "Invalid JSON, a broken business rule, or a missing or invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role payment:write", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Same key still in flight (with Retry-After), or orderId already paid", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying a request still in flight"))),
        (status = 422, description = "The JSON does not match the request schema, or the Idempotency-Key was used with a different body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Json(body): Json<CreatePayment>,
) -> Result<Response, ApiError> {
    principal.require(role::PAYMENT_WRITE)?;
    let trace_id = trace_id_from(&headers);
    let key = idempotency_key(&headers).map_err(|e| e.with_trace(&trace_id))?;
    let payment = build_payment(&state.config.http, &principal.subject, key, &trace_id, body)
        .map_err(|e| e.with_trace(&trace_id))?;
    let (payment_id, order_id) = (payment.payment_id, payment.order_id.clone());
    let outcome = state.intake.submit(payment).await;
    answer(outcome, payment_id, &order_id).map_err(|e| e.with_trace(&trace_id))
}

/// The required `Idempotency-Key` header (1..=128 characters, trimmed).
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 128)
        .map(str::to_string)
        .ok_or_else(|| ApiError::validation("Idempotency-Key header (1..=128 chars) is required"))
}

/// Validates a request body and builds its rows: what intake does with a
/// body before the database (also the fuzz target `intake_validation`).
pub fn build_payment(
    limits: &HttpConfig,
    client_id: &str,
    key: String,
    trace_id: &str,
    body: CreatePayment,
) -> Result<NewPayment, ApiError> {
    validate(&body, limits)?;
    Ok(prepare(client_id, key, trace_id, body))
}

/// Every row of the payment, built in the handler: the group's writer only
/// binds them.
fn prepare(client_id: &str, key: String, trace_id: &str, body: CreatePayment) -> NewPayment {
    let request_sha256 = hex::encode(Sha256::digest(
        serde_json::to_vec(&body).expect("serializes"),
    ));
    let payment_id = Uuid::new_v4();
    let currency = body.total_amount.currency.clone();
    let ids: Vec<(Uuid, Uuid)> = body
        .payment_orders
        .iter()
        .map(|_| (Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    let view = accepted_view(payment_id, trace_id, &body, &ids);
    let orders = body
        .payment_orders
        .into_iter()
        .zip(ids)
        .map(|(order, (payment_order_id, _))| {
            let message_key = payment_order_id.to_string();
            let data = OrderRef {
                payment_order_id,
                payment_id,
                seller_id: order.seller_id.clone(),
                amount: order.amount.clone(),
            };
            let event = Envelope::new(
                event_type::PAYMENT_ORDER_CREATED,
                &message_key,
                0,
                trace_id,
                None,
                &data,
            );
            NewOrder {
                payment_order_id,
                seller_id: order.seller_id,
                amount_minor: order.amount.quantity,
                event_id: event.event_id,
                envelope_json: serde_json::to_string(&event).expect("envelopes serialize"),
            }
        })
        .collect();
    NewPayment {
        payment_id,
        client_id: client_id.to_string(),
        idempotency_key: key,
        request_sha256,
        buyer_id: body.buyer_id,
        order_id: body.order_id,
        total_minor: body.total_amount.quantity,
        currency,
        trace_id: trace_id.to_string(),
        orders,
        response_json: serde_json::to_string(&view).expect("serializes"),
    }
}

/// The 202 body: the new payment, every order INITIATED.
fn accepted_view(
    payment_id: Uuid,
    trace_id: &str,
    body: &CreatePayment,
    ids: &[(Uuid, Uuid)],
) -> PaymentView {
    PaymentView {
        payment_id,
        buyer_id: body.buyer_id.clone(),
        order_id: body.order_id.clone(),
        total_amount: body.total_amount.clone(),
        status: "PENDING".into(),
        trace_id: trace_id.to_string(),
        created_at: Utc::now(),
        payment_orders: body
            .payment_orders
            .iter()
            .zip(ids)
            .map(|(o, (payment_order_id, _))| PaymentOrderView {
                payment_order_id: *payment_order_id,
                seller_id: o.seller_id.clone(),
                amount: o.amount.clone(),
                status: OrderStatus::Initiated,
                psp_reference: None,
                failure_reason: None,
                next_retry_at: None,
                latest_outcome: None,
                attempts: Vec::new(),
                refunds: Vec::new(),
            })
            .collect(),
    }
}

/// The HTTP answer to a group's outcome for one request.
fn answer(outcome: Outcome, payment_id: Uuid, order_id: &str) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Accepted { response_json } => {
            let mut response = (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/json")],
                response_json,
            )
                .into_response();
            set_location(&mut response, &payment_id.to_string());
            Ok(response)
        }
        Outcome::Replayed { status, body } => {
            let mut response = respond(
                StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
                &body,
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Outcome::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "this Idempotency-Key was used with a different request body",
        )),
        Outcome::KeyInFlight => {
            let mut error = ApiError::conflict(
                "request-in-flight",
                "a request with this Idempotency-Key is still being processed",
            );
            error.retry_after_secs = Some(1);
            Err(error)
        }
        Outcome::OrderTaken => Err(ApiError::conflict(
            "order-already-paid",
            format!("orderId {order_id} already has a payment"),
        )),
        Outcome::Unavailable { reason } => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "intake-unavailable",
                format!("payment not written ({reason}); retry with the same Idempotency-Key"),
            );
            error.retry_after_secs = Some(1);
            Err(error)
        }
    }
}

fn respond(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(id) = body.get("paymentId").and_then(|v| v.as_str()) {
        set_location(&mut response, id);
    }
    response
}

fn set_location(response: &mut Response, payment_id: &str) {
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/payments/{payment_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
}

/// A payment with its orders, statuses and PSP attempts.
#[utoipa::path(get, path = "/api/v1/payments/{id}", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown payment, or another client's", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<PaymentView>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::validation("payment id must be a UUID"))?;
    let payment = payments::find_payment(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no payment {id}")))?;
    // Clients see their own payments; finance and admins see all.
    let privileged =
        principal.roles.contains(role::FINANCE) || principal.roles.contains(role::ADMIN);
    if payment.client_id != principal.subject && !privileged {
        return Err(ApiError::not_found(format!("no payment {id}")));
    }
    let orders = payments::orders_of(&state.pool, id).await?;
    let attempts = payments::attempts_of(&state.pool, id).await?;
    let mut refunds = crate::store::refunds::of_payment(&state.pool, id).await?;
    let order_views: Vec<PaymentOrderView> = orders
        .into_iter()
        .map(|o| {
            let mine: Vec<AttemptView> = attempts
                .iter()
                .filter(|a| a.payment_order_id == o.payment_order_id)
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    outcome: a
                        .outcome
                        .as_deref()
                        .and_then(crate::domain::payment::OutcomeKind::parse)
                        .map(|kind| PspOutcome {
                            kind,
                            code: a.code.clone(),
                            message: a.message.clone(),
                            psp_reference: a.psp_reference.clone(),
                        }),
                    latency_ms: a.latency_ms,
                    component_sha256: a.component_sha256.clone(),
                    settled_by_status: a.settled_by_status,
                    claimed_at: a.claimed_at,
                })
                .collect();
            PaymentOrderView {
                payment_order_id: o.payment_order_id,
                seller_id: o.seller_id,
                amount: Money::new(o.amount_minor, &o.currency),
                status: o.status,
                psp_reference: o.psp_reference,
                failure_reason: o.failure_reason,
                next_retry_at: o.next_retry_at,
                latest_outcome: mine.iter().rev().find_map(|a| a.outcome.clone()),
                attempts: mine,
                refunds: refunds
                    .extract_if(.., |r| r.payment_order_id == o.payment_order_id)
                    .map(Into::into)
                    .collect(),
            }
        })
        .collect();
    Ok(axum::Json(PaymentView {
        payment_id: payment.payment_id,
        buyer_id: payment.buyer_id,
        order_id: payment.order_id,
        total_amount: Money::new(payment.total_amount_minor, &payment.currency),
        status: payment_status(&order_views).into(),
        trace_id: payment.trace_id,
        created_at: payment.created_at,
        payment_orders: order_views,
    }))
}

fn payment_status(orders: &[PaymentOrderView]) -> &'static str {
    let all = |s: OrderStatus| orders.iter().all(|o| o.status == s);
    let any = |s: OrderStatus| orders.iter().any(|o| o.status == s);
    if all(OrderStatus::Succeeded) {
        "SUCCEEDED"
    } else if all(OrderStatus::Failed) {
        "FAILED"
    } else if any(OrderStatus::RequiresReview) {
        "REQUIRES_REVIEW"
    } else if any(OrderStatus::Parked) {
        "PARKED"
    } else if orders.iter().all(|o| o.status.is_final()) {
        "PARTIALLY_SUCCEEDED"
    } else {
        "PENDING"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_payment_orders: usize) -> HttpConfig {
        HttpConfig {
            max_payment_orders,
            ..HttpConfig::default()
        }
    }

    fn body(total: i64, orders: &[(&str, i64, &str)]) -> CreatePayment {
        CreatePayment {
            buyer_id: "b-1".into(),
            order_id: "o-1".into(),
            total_amount: Money::new(total, "EUR"),
            payment_orders: orders
                .iter()
                .map(|(s, q, c)| CreatePaymentOrder {
                    seller_id: s.to_string(),
                    amount: Money::new(*q, c),
                })
                .collect(),
        }
    }

    #[test]
    fn valid_multi_seller_payment_passes() {
        validate(
            &body(300, &[("s-1", 100, "EUR"), ("s-2", 200, "EUR")]),
            &limits(10),
        )
        .unwrap();
    }

    #[test]
    fn broken_payments_are_refused() {
        let cases = [
            body(300, &[("s-1", 100, "EUR"), ("s-2", 100, "EUR")]),
            body(200, &[("s-1", 100, "EUR"), ("s-2", 100, "USD")]),
            body(0, &[]),
            body(200, &[("s-1", 100, "EUR"), ("s-1", 100, "EUR")]),
            body(-5, &[("s-1", -5, "EUR")]),
            body(100, &[("GLOBAL", 100, "EUR")]),
            body(100, &[("s.1", 100, "EUR")]),
            body(i64::MAX, &[("s-1", i64::MAX, "EUR"), ("s-2", 1, "EUR")]),
            body(1 << 62, &[("s-1", 1 << 62, "EUR")]),
            CreatePayment {
                buyer_id: "b\0".into(),
                ..body(100, &[("s-1", 100, "EUR")])
            },
        ];
        for case in cases {
            assert!(validate(&case, &limits(10)).is_err(), "accepted {case:?}");
        }
        assert!(validate(&body(100, &[("s-1", 100, "EUR")]), &limits(0)).is_err());
    }

    #[test]
    fn amounts_are_capped_per_order_and_per_payment() {
        let caps = HttpConfig {
            max_order_amount_minor: 1_000,
            max_payment_amount_minor: 1_500,
            ..limits(10)
        };
        validate(&body(1_000, &[("s-1", 1_000, "EUR")]), &caps).unwrap();
        validate(
            &body(1_500, &[("s-1", 1_000, "EUR"), ("s-2", 500, "EUR")]),
            &caps,
        )
        .unwrap();
        let over_order = body(1_001, &[("s-1", 1_001, "EUR")]);
        assert!(validate(&over_order, &caps).is_err());
        let over_total = body(1_501, &[("s-1", 1_000, "EUR"), ("s-2", 501, "EUR")]);
        assert!(validate(&over_total, &caps).is_err());
    }

    #[test]
    fn trace_id_comes_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(trace_id_from(&headers), "4bf92f3577b34da6a3ce929d0e0e4736");
        headers.insert("x-trace-id", HeaderValue::from_static("abc-123"));
        assert_eq!(trace_id_from(&headers), "abc-123");
    }
}
