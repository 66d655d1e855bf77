//! payment_orders status machine. Every transition is guarded by the current
//! status and the attempt number, so replays and stale results change nothing.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::payments::OrderRow;

pub async fn get(pool: &PgPool, payment_order_id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as("SELECT * FROM payment_orders WHERE payment_order_id = $1")
        .bind(payment_order_id)
        .fetch_optional(pool)
        .await
}

/// The executor's first write for a call request: pins the adapter version
/// on the first PSP call (an operator-resumed PARKED order follows the
/// version active now: the one it was pinned to is what failed) and marks
/// the order PENDING. Returns the order as it is now; the first pin wins.
pub async fn pin_adapter(
    tx: &mut Transaction<'_, Postgres>,
    payment_order_id: Uuid,
    active_sha256: &str,
) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(
        "UPDATE payment_orders SET
             adapter_sha256 = CASE WHEN status = 'PARKED' OR adapter_sha256 IS NULL THEN $2 ELSE adapter_sha256 END,
             status = CASE WHEN status = 'INITIATED' THEN 'PENDING' ELSE status END, updated_at = now()
         WHERE payment_order_id = $1 RETURNING *",
    )
    .bind(payment_order_id)
    .bind(active_sha256)
    .fetch_optional(&mut **tx)
    .await
}

/// The retry for `attempt` has been picked up: it is no longer due.
pub async fn clear_due_retry(
    tx: &mut Transaction<'_, Postgres>,
    payment_order_id: Uuid,
    attempt: i32,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payment_orders SET next_retry_at = NULL, next_attempt = NULL
         WHERE payment_order_id = $1 AND next_attempt = $2",
    )
    .bind(payment_order_id)
    .bind(attempt)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Result of attempt `attempt` is final. False if it was stale or already applied.
pub async fn finalize(
    pool: &PgPool,
    payment_order_id: Uuid,
    attempt: i32,
    status: &str,
    psp_reference: Option<&str>,
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE payment_orders SET status = $3, final_attempt = $2, last_applied_attempt = $2,
             psp_reference = $4, failure_reason = $5, next_attempt = NULL, next_retry_at = NULL, updated_at = now()
         WHERE payment_order_id = $1 AND status IN ('INITIATED', 'PENDING', 'PARKED', 'REQUIRES_REVIEW')
           AND last_applied_attempt < $2",
    )
    .bind(payment_order_id)
    .bind(attempt)
    .bind(status)
    .bind(psp_reference)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Transient result of `attempt`: the next attempt is due at `due`.
pub async fn schedule_retry(
    pool: &PgPool,
    payment_order_id: Uuid,
    attempt: i32,
    due: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE payment_orders SET status = 'PENDING', last_applied_attempt = $2, next_attempt = $2 + 1,
             next_retry_at = $3, updated_at = now()
         WHERE payment_order_id = $1 AND status IN ('INITIATED', 'PENDING', 'PARKED') AND last_applied_attempt < $2",
    )
    .bind(payment_order_id)
    .bind(attempt)
    .bind(due)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Unknown outcome that `status` could not settle.
pub async fn require_review(
    pool: &PgPool,
    payment_order_id: Uuid,
    attempt: i32,
    reason: &str,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE payment_orders SET status = 'REQUIRES_REVIEW', last_applied_attempt = $2, failure_reason = $3,
             next_attempt = NULL, next_retry_at = NULL, updated_at = now()
         WHERE payment_order_id = $1 AND status IN ('INITIATED', 'PENDING', 'PARKED') AND last_applied_attempt < $2",
    )
    .bind(payment_order_id)
    .bind(attempt)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Its event went to a DLQ. Final orders stay final.
pub async fn park(pool: &PgPool, payment_order_id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payment_orders SET status = 'PARKED', failure_reason = $2, updated_at = now()
         WHERE payment_order_id = $1 AND status NOT IN ('SUCCEEDED', 'FAILED')",
    )
    .bind(payment_order_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Retries due before `before` (for the sweeper that rebuilds Redis).
pub async fn due_retries(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<(Uuid, i32, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT payment_order_id, next_attempt, next_retry_at FROM payment_orders
         WHERE next_retry_at IS NOT NULL AND next_retry_at < $1 AND next_attempt IS NOT NULL
           AND status = 'PENDING' ORDER BY next_retry_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// INITIATED orders untouched for `age_secs` whose created event was sent
/// (none waits in the outbox), with their payment's trace id.
pub async fn stranded_initiated(
    pool: &PgPool,
    age_secs: f64,
    limit: i64,
) -> sqlx::Result<Vec<(crate::domain::events::OrderRef, String)>> {
    let rows: Vec<(Uuid, Uuid, String, i64, String, String)> = sqlx::query_as(
        "SELECT o.payment_order_id, o.payment_id, o.seller_id, o.amount_minor, o.currency::text, p.trace_id
         FROM payment_orders o JOIN payments p USING (payment_id)
         WHERE o.status = 'INITIATED' AND o.updated_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM outbox_event e WHERE e.status = 'NEW' AND e.message_key = o.payment_order_id::text)
         ORDER BY o.updated_at LIMIT $2",
    )
    .bind(age_secs)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(payment_order_id, payment_id, seller_id, amount, currency, trace_id)| {
                let order = crate::domain::events::OrderRef {
                    payment_order_id,
                    payment_id,
                    seller_id,
                    amount: crate::domain::money::Money::new(amount, &currency),
                };
                (order, trace_id)
            },
        )
        .collect())
}

/// Marks orders as just handled (the stranded sweep waits again before a resend).
pub async fn touch(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query("UPDATE payment_orders SET updated_at = now() WHERE payment_order_id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
