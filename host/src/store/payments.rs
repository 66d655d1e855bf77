//! payments, payment_orders and idempotency_keys: written by intake, read by the API.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

pub struct NewPayment<'a> {
    pub payment_id: Uuid,
    pub client_id: &'a str,
    pub buyer_id: &'a str,
    pub order_id: &'a str,
    pub total_minor: i64,
    pub currency: &'a str,
    pub trace_id: &'a str,
}

pub struct NewOrder {
    pub payment_order_id: Uuid,
    pub seller_id: String,
    pub amount_minor: i64,
}

pub struct StoredResponse {
    pub request_sha256: String,
    pub status: i32,
    pub body: Value,
}

/// Takes the transaction-scoped advisory lock of an idempotency key. False
/// means another request with this key is in flight. The lock dies with the
/// transaction, so a crash never strands a key.
pub async fn try_lock_key(tx: &mut Transaction<'_, Postgres>, lock_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(lock_id)
        .fetch_one(&mut **tx)
        .await
}

pub async fn find_response(
    tx: &mut Transaction<'_, Postgres>,
    client_id: &str,
    key: &str,
) -> sqlx::Result<Option<StoredResponse>> {
    let row: Option<(String, i32, Value)> = sqlx::query_as(
        "SELECT request_sha256, response_status, response_body FROM idempotency_keys
         WHERE client_id = $1 AND idempotency_key = $2",
    )
    .bind(client_id)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(request_sha256, status, body)| StoredResponse {
        request_sha256,
        status,
        body,
    }))
}

/// Inserts the payment; false when (client, orderId) already has one.
pub async fn insert_payment(
    tx: &mut Transaction<'_, Postgres>,
    p: &NewPayment<'_>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO payments (payment_id, client_id, buyer_id, order_id, total_amount_minor, currency, trace_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT ON CONSTRAINT payments_client_order_unique DO NOTHING",
    )
    .bind(p.payment_id)
    .bind(p.client_id)
    .bind(p.buyer_id)
    .bind(p.order_id)
    .bind(p.total_minor)
    .bind(p.currency)
    .bind(p.trace_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn insert_orders(
    tx: &mut Transaction<'_, Postgres>,
    payment_id: Uuid,
    currency: &str,
    orders: &[NewOrder],
) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.payment_order_id).collect();
    let sellers: Vec<&str> = orders.iter().map(|o| o.seller_id.as_str()).collect();
    let amounts: Vec<i64> = orders.iter().map(|o| o.amount_minor).collect();
    let keys: Vec<String> = orders
        .iter()
        .map(|o| psp_idempotency_key(o.payment_order_id))
        .collect();
    sqlx::query(
        "INSERT INTO payment_orders (payment_order_id, payment_id, seller_id, amount_minor, currency, psp_idempotency_key)
         SELECT id, $2, seller, amount, $3, key
         FROM UNNEST($1::uuid[], $4::text[], $5::bigint[], $6::text[]) AS t(id, seller, amount, key)",
    )
    .bind(&ids)
    .bind(payment_id)
    .bind(currency)
    .bind(&sellers)
    .bind(&amounts)
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The key the PSP sees for every attempt of one order.
pub fn psp_idempotency_key(payment_order_id: Uuid) -> String {
    format!("paynode-{}", payment_order_id.simple())
}

pub async fn insert_response(
    tx: &mut Transaction<'_, Postgres>,
    client_id: &str,
    key: &str,
    request_sha256: &str,
    payment_id: Uuid,
    status: i32,
    body: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, request_sha256, payment_id, response_status, response_body)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(client_id)
    .bind(key)
    .bind(request_sha256)
    .bind(payment_id)
    .bind(status)
    .bind(body)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub client_id: String,
    pub buyer_id: String,
    pub order_id: String,
    pub total_amount_minor: i64,
    pub currency: String,
    pub trace_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Clone)]
pub struct OrderRow {
    pub payment_order_id: Uuid,
    pub payment_id: Uuid,
    pub seller_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: crate::domain::payment::OrderStatus,
    pub psp_idempotency_key: String,
    pub adapter_sha256: Option<String>,
    /// The activation (component + config) the order's PSP calls use.
    pub adapter_activation_id: Option<i64>,
    /// Status re-checks the review janitor made.
    pub review_checks: i32,
    pub last_applied_attempt: i32,
    pub next_attempt: Option<i32>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub psp_reference: Option<String>,
    pub failure_reason: Option<String>,
    pub final_attempt: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    /// The order as events carry it.
    pub fn order_ref(&self) -> crate::domain::events::OrderRef {
        crate::domain::events::OrderRef {
            payment_order_id: self.payment_order_id,
            payment_id: self.payment_id,
            seller_id: self.seller_id.clone(),
            amount: crate::domain::money::Money::new(self.amount_minor, &self.currency),
        }
    }
}

#[derive(sqlx::FromRow, Clone)]
pub struct AttemptRow {
    pub payment_order_id: Uuid,
    pub attempt: i32,
    pub component_sha256: String,
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub psp_reference: Option<String>,
    pub latency_ms: Option<i64>,
    pub settled_by_status: bool,
    pub component_calls: i32,
    pub claimed_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// The claim's holder, `instance#boot`.
    pub node_id: String,
}

pub async fn find_payment(pool: &PgPool, payment_id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as("SELECT * FROM payments WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_optional(pool)
        .await
}

pub async fn orders_of(pool: &PgPool, payment_id: Uuid) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as("SELECT * FROM payment_orders WHERE payment_id = $1 ORDER BY seller_id")
        .bind(payment_id)
        .fetch_all(pool)
        .await
}

pub async fn attempts_of(pool: &PgPool, payment_id: Uuid) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(
        "SELECT a.payment_order_id, a.attempt, a.component_sha256, a.outcome, a.code, a.message,
                a.psp_reference, a.latency_ms, a.settled_by_status, a.component_calls, a.claimed_at, a.lease_until, a.node_id
         FROM psp_attempts a JOIN payment_orders o USING (payment_order_id)
         WHERE o.payment_id = $1 ORDER BY a.payment_order_id, a.attempt",
    )
    .bind(payment_id)
    .fetch_all(pool)
    .await
}
