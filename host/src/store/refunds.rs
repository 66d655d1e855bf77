//! refunds and refund_attempts. Every status change is a guarded update
//! binding the sources of its [`RefundTransition`] and reporting whether it
//! applied; the refund request itself is written with its outbox event and
//! its Idempotency-Key record in one transaction, under the order's row
//! lock, so concurrent requests can never refund more than was captured.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::payments::OrderRow;
use crate::domain::events::Envelope;
use crate::domain::payment::PspOutcome;
use crate::domain::refund::{RefundFinalized, RefundStatus, RefundTransition};
use crate::kafka::topic;

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct RefundRow {
    pub refund_id: Uuid,
    pub payment_order_id: Uuid,
    pub client_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub status: RefundStatus,
    pub psp_idempotency_key: String,
    pub last_applied_attempt: i32,
    pub psp_reference: Option<String>,
    pub failure_reason: Option<String>,
    pub trace_id: String,
    pub finalized_event_id: Uuid,
    /// The review janitor's re-checks so far, and when the next is due.
    pub review_checks: i32,
    pub next_review_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct RefundAttemptRow {
    pub refund_id: Uuid,
    pub attempt: i32,
    pub component_sha256: String,
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub psp_reference: Option<String>,
    pub settled_by_status: bool,
}

/// A refund request, built by the API handler.
pub struct NewRefund {
    pub refund_id: Uuid,
    pub payment_order_id: Uuid,
    pub client_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub psp_idempotency_key: String,
    pub trace_id: String,
    pub idempotency_key: String,
    pub request_sha256: String,
    pub response_json: String,
    /// `RefundRequested`, attempt 1.
    pub event: Envelope,
}

/// The order, locked until the transaction ends: refund requests of one
/// order are decided one after the other.
pub async fn lock_order(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as("SELECT * FROM payment_orders WHERE payment_order_id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// What refunds not FAILED hold of the order (requested, in review or
/// succeeded: each may still be or already is money back).
pub async fn held(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<i64> {
    let total: Option<i64> = sqlx::query_scalar(
        "SELECT sum(amount_minor)::bigint FROM refunds WHERE payment_order_id = $1 AND status <> 'FAILED'",
    )
    .bind(order_id)
    .fetch_one(conn)
    .await?;
    Ok(total.unwrap_or(0))
}

/// The refund, its outbox event and its Idempotency-Key record.
pub async fn insert(
    conn: &mut PgConnection,
    refund: &NewRefund,
    retention_secs: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO refunds (refund_id, payment_order_id, client_id, amount_minor, currency, reason,
             psp_idempotency_key, trace_id, finalized_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(refund.refund_id)
    .bind(refund.payment_order_id)
    .bind(&refund.client_id)
    .bind(refund.amount_minor)
    .bind(&refund.currency)
    .bind(&refund.reason)
    .bind(&refund.psp_idempotency_key)
    .bind(&refund.trace_id)
    .bind(crate::domain::refund::finalized_event_id(refund.refund_id))
    .execute(&mut *conn)
    .await?;
    let envelope = serde_json::to_string(&refund.event).expect("envelopes serialize");
    super::outbox::append_json(
        &mut *conn,
        topic::REFUND_REQUESTED,
        &[refund.event.event_id],
        &[refund.payment_order_id.to_string()],
        &[envelope.as_str()],
    )
    .await?;
    // An expired record of the same key is replaced (as intake does).
    sqlx::query(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, request_sha256, refund_id, response_status, response_body)
         VALUES ($1, $2, $3, $4, 202, $5::jsonb)
         ON CONFLICT (client_id, idempotency_key) DO UPDATE
         SET request_sha256 = EXCLUDED.request_sha256, payment_id = NULL, refund_id = EXCLUDED.refund_id,
             response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,
             created_at = now()
         WHERE idempotency_keys.created_at <= now() - $6::bigint * interval '1 second'",
    )
    .bind(&refund.client_id)
    .bind(&refund.idempotency_key)
    .bind(&refund.request_sha256)
    .bind(refund.refund_id)
    .bind(&refund.response_json)
    .bind(retention_secs as i64)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, refund_id: Uuid) -> sqlx::Result<Option<RefundRow>> {
    sqlx::query_as("SELECT * FROM refunds WHERE refund_id = $1")
        .bind(refund_id)
        .fetch_optional(pool)
        .await
}

/// The refund a PSP idempotency key names (notifications).
pub async fn by_psp_key(pool: &PgPool, key: &str) -> sqlx::Result<Option<RefundRow>> {
    sqlx::query_as("SELECT * FROM refunds WHERE psp_idempotency_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Every refund of a payment's orders, oldest first.
pub async fn of_payment(pool: &PgPool, payment_id: Uuid) -> sqlx::Result<Vec<RefundRow>> {
    sqlx::query_as(
        "SELECT r.* FROM refunds r JOIN payment_orders o USING (payment_order_id)
         WHERE o.payment_id = $1 ORDER BY r.created_at, r.refund_id",
    )
    .bind(payment_id)
    .fetch_all(pool)
    .await
}

/// Claims an attempt before its PSP call. `Err(row)`: it was claimed
/// before (a redelivery): with an outcome, that outcome stands; without
/// one, the PSP may have refunded, so only `refund-status` may be asked.
pub async fn claim_attempt(
    pool: &PgPool,
    refund_id: Uuid,
    attempt: i32,
    sha256: &str,
) -> sqlx::Result<Result<(), RefundAttemptRow>> {
    let claimed = sqlx::query(
        "INSERT INTO refund_attempts (refund_id, attempt, component_sha256) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(refund_id)
    .bind(attempt)
    .bind(sha256)
    .execute(pool)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(Ok(()));
    }
    let row = sqlx::query_as("SELECT * FROM refund_attempts WHERE refund_id = $1 AND attempt = $2")
        .bind(refund_id)
        .bind(attempt)
        .fetch_one(pool)
        .await?;
    Ok(Err(row))
}

/// Records an attempt's outcome once; returns what is recorded (an earlier
/// outcome wins over a later one).
pub async fn finish_attempt(
    pool: &PgPool,
    refund_id: Uuid,
    attempt: i32,
    outcome: &PspOutcome,
    settled_by_status: bool,
) -> sqlx::Result<RefundAttemptRow> {
    sqlx::query(
        "UPDATE refund_attempts SET outcome = $3, code = $4, message = $5, psp_reference = $6,
             settled_by_status = $7, finished_at = now()
         WHERE refund_id = $1 AND attempt = $2 AND outcome IS NULL",
    )
    .bind(refund_id)
    .bind(attempt)
    .bind(outcome.kind.as_str())
    .bind(&outcome.code)
    .bind(&outcome.message)
    .bind(&outcome.psp_reference)
    .bind(settled_by_status)
    .execute(pool)
    .await?;
    sqlx::query_as("SELECT * FROM refund_attempts WHERE refund_id = $1 AND attempt = $2")
        .bind(refund_id)
        .bind(attempt)
        .fetch_one(pool)
        .await
}

/// One guarded status change.
pub struct Change<'a> {
    pub refund_id: Uuid,
    pub transition: RefundTransition,
    pub to: RefundStatus,
    /// The attempt whose result this is; with `in_order` only exactly the
    /// next attempt applies (older results are stale).
    pub attempt: i32,
    pub in_order: bool,
    pub psp_reference: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// Entering REQUIRES_REVIEW: the review janitor's first re-check (None:
    /// no janitor). Any other status clears the schedule.
    pub first_review_at: Option<DateTime<Utc>>,
}

/// Applies `change` if the refund's status allows its transition. True if
/// it applied.
pub async fn transition(conn: &mut PgConnection, change: &Change<'_>) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE refunds SET status = $2, last_applied_attempt = GREATEST(last_applied_attempt, $3),
             psp_reference = COALESCE($4, psp_reference), failure_reason = $5,
             review_checks = 0, next_retry_at = NULL,
             next_review_at = CASE WHEN $2 = 'REQUIRES_REVIEW' THEN $8 END,
             updated_at = now()
         WHERE refund_id = $1 AND status = ANY($6) AND (NOT $7 OR last_applied_attempt = $3 - 1)",
    )
    .bind(change.refund_id)
    .bind(change.to)
    .bind(change.attempt)
    .bind(change.psp_reference)
    .bind(change.reason)
    .bind(change.transition.sources())
    .bind(change.in_order)
    .bind(change.first_review_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

impl RefundRow {
    /// Its `RefundFinalized` payload, once it is SUCCEEDED or FAILED.
    pub fn finalized(&self, order: crate::domain::events::OrderRef) -> Option<RefundFinalized> {
        self.status.is_final().then(|| RefundFinalized {
            refund_id: self.refund_id,
            order,
            refund_amount: crate::domain::money::Money::new(self.amount_minor, &self.currency),
            status: self.status,
            psp_reference: self.psp_reference.clone(),
            reason: self.failure_reason.clone(),
            final_attempt: self.last_applied_attempt.max(0) as u32,
        })
    }
}

/// Settles a refund in REQUIRES_REVIEW (a notification, the review janitor)
/// and appends its
/// `RefundFinalized` event to the outbox, in one transaction. False if it
/// was no longer in review (nothing written).
pub async fn settle_review(
    pool: &PgPool,
    refund: &RefundRow,
    order: crate::domain::events::OrderRef,
    to: RefundStatus,
    psp_reference: Option<&str>,
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let change = Change {
        refund_id: refund.refund_id,
        transition: RefundTransition::SettleReview,
        to,
        attempt: refund.last_applied_attempt.max(1),
        in_order: false,
        psp_reference,
        reason,
        first_review_at: None,
    };
    if !transition(&mut tx, &change).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let row: RefundRow = sqlx::query_as("SELECT * FROM refunds WHERE refund_id = $1")
        .bind(refund.refund_id)
        .fetch_one(&mut *tx)
        .await?;
    let finalized = row.finalized(order).expect("settled to a final status");
    let event = finalized.envelope(&row.trace_id, None);
    super::outbox::append(
        &mut tx,
        topic::REFUND_FINALIZED,
        &[(row.payment_order_id.to_string(), event)],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Whether a notification about this PSP event was already recorded.
pub async fn notification_seen(pool: &PgPool, adapter: &str, event_id: &str) -> sqlx::Result<bool> {
    let seen: Option<String> = sqlx::query_scalar(
        "SELECT result FROM psp_notifications WHERE adapter = $1 AND event_id = $2",
    )
    .bind(adapter)
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    Ok(seen.is_some())
}

/// Records a handled notification (first writer wins).
pub async fn record_notification(
    pool: &PgPool,
    adapter: &str,
    event_id: &str,
    kind: &str,
    key: &str,
    psp_reference: &str,
    result: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO psp_notifications (adapter, event_id, kind, idempotency_key, psp_reference, result)
         VALUES ($1, $2, $3, $4, NULLIF($5, ''), $6) ON CONFLICT DO NOTHING",
    )
    .bind(adapter)
    .bind(event_id)
    .bind(kind)
    .bind(key)
    .bind(psp_reference)
    .bind(result)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves a REQUESTED refund past a transient `attempt` (its retry is
/// scheduled). True if it applied.
pub async fn pass_attempt(
    pool: &PgPool,
    refund_id: Uuid,
    attempt: i32,
    retry_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE refunds SET last_applied_attempt = $2, next_retry_at = $4, updated_at = now()
         WHERE refund_id = $1 AND status = ANY($3) AND last_applied_attempt = $2 - 1",
    )
    .bind(refund_id)
    .bind(attempt)
    .bind(RefundTransition::Attempt.sources())
    .bind(retry_at)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// REQUESTED refunds whose next attempt was due before `before` and has not
/// been claimed: their retry should have left Redis by now. (A claimed one
/// reached the executor; Kafka redelivers it if that executor died.)
pub async fn due_retries(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<RefundRow>> {
    sqlx::query_as(
        "SELECT * FROM refunds r
         WHERE r.next_retry_at IS NOT NULL AND r.next_retry_at < $1 AND r.status = 'REQUESTED'
           AND NOT EXISTS (SELECT 1 FROM refund_attempts a
                           WHERE a.refund_id = r.refund_id AND a.attempt = r.last_applied_attempt + 1)
         ORDER BY r.next_retry_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Refunds in review whose janitor re-check is due, oldest due first.
pub async fn due_reviews(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<RefundRow>> {
    sqlx::query_as(
        "SELECT * FROM refunds
         WHERE next_review_at IS NOT NULL AND next_review_at <= now() AND status = 'REQUIRES_REVIEW'
         ORDER BY next_review_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The janitor asked and the PSP still does not know: records check
/// number `checks` and schedules the next (None: the schedule is spent, a
/// notification or a human settles it). Guarded by the status and by the
/// previous count, so a check another node already recorded, or a refund
/// settled meanwhile, changes nothing. True if it applied.
pub async fn next_review(
    pool: &PgPool,
    refund_id: Uuid,
    checks: i32,
    next_at: Option<DateTime<Utc>>,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE refunds SET review_checks = $2, next_review_at = $3, updated_at = now()
         WHERE refund_id = $1 AND status = 'REQUIRES_REVIEW' AND review_checks = $2 - 1",
    )
    .bind(refund_id)
    .bind(checks)
    .bind(next_at)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}
