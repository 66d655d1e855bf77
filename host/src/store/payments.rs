//! payments, payment_orders and psp_attempts as the API reads them (intake
//! writes them in groups: `store::intake`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The key the PSP sees for every attempt of one order.
pub fn psp_idempotency_key(payment_order_id: Uuid) -> String {
    format!("paynode-{}", payment_order_id.simple())
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
