//! payment_orders status machine. Every transition is guarded by the current
//! status and the attempt number, so replays and stale results change nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::payments::OrderRow;
use crate::domain::payment::{OrderStatus, Transition};

pub async fn get(pool: &PgPool, payment_order_id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as("SELECT * FROM payment_orders WHERE payment_order_id = $1")
        .bind(payment_order_id)
        .fetch_optional(pool)
        .await
}

/// The order a PSP idempotency key names (notifications).
pub async fn by_psp_key(pool: &PgPool, key: &str) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as("SELECT * FROM payment_orders WHERE psp_idempotency_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// The adapter activation (component and its config) an order is pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub sha256: String,
    pub activation_id: i64,
}

/// The executor's first write for a batch of call requests: pins the
/// activation at an order's first PSP call and marks INITIATED orders
/// PENDING. A pin is never changed here (only `resume_parked` may re-pin,
/// for `dlq replay`), so every later charge and status query of an order
/// goes to the same component with the same config. Returns the orders as
/// they are now.
pub async fn start_psp_calls(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
    active: &Pin,
) -> sqlx::Result<HashMap<Uuid, OrderRow>> {
    let rows: Vec<OrderRow> = sqlx::query_as(
        "UPDATE payment_orders SET
             adapter_activation_id = CASE WHEN adapter_sha256 IS NULL AND status = ANY($4) THEN $3 ELSE adapter_activation_id END,
             adapter_sha256 = CASE WHEN adapter_sha256 IS NULL AND status = ANY($4) THEN $2 ELSE adapter_sha256 END,
             status = CASE WHEN status = 'INITIATED' THEN 'PENDING' ELSE status END, updated_at = now()
         WHERE payment_order_id = ANY($1) RETURNING *",
    )
    .bind(ids)
    .bind(&active.sha256)
    .bind(active.activation_id)
    .bind(Transition::StartPspCall.sources())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.payment_order_id, r)).collect())
}

/// `dlq replay` puts a PARKED order back on the road, re-pinned to `repin`
/// when given (the version it was pinned to is what failed). True if the
/// order was parked.
pub async fn resume_parked(
    tx: &mut Transaction<'_, Postgres>,
    payment_order_id: Uuid,
    repin: Option<&Pin>,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE payment_orders SET status = 'PENDING',
             adapter_sha256 = COALESCE($2, adapter_sha256),
             adapter_activation_id = COALESCE($3, adapter_activation_id), updated_at = now()
         WHERE payment_order_id = $1 AND status = ANY($4)",
    )
    .bind(payment_order_id)
    .bind(repin.map(|p| p.sha256.as_str()))
    .bind(repin.map(|p| p.activation_id))
    .bind(Transition::Resume.sources())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// The retries for these (order, attempt) pairs have been picked up: they
/// are no longer due.
pub async fn clear_due_retries(
    tx: &mut Transaction<'_, Postgres>,
    pairs: &[(Uuid, i32)],
) -> sqlx::Result<()> {
    let (ids, attempts): (Vec<Uuid>, Vec<i32>) = pairs.iter().copied().unzip();
    sqlx::query(
        "UPDATE payment_orders o SET next_retry_at = NULL, next_attempt = NULL
         FROM UNNEST($1::uuid[], $2::int4[]) AS t(id, attempt)
         WHERE o.payment_order_id = t.id AND o.next_attempt = t.attempt",
    )
    .bind(ids)
    .bind(attempts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What applying one PSP result does to its order.
#[derive(Debug, Clone)]
pub enum ResultWrite {
    /// Succeeded, declined, or given up: final.
    Finalize {
        status: OrderStatus,
        psp_reference: Option<String>,
        reason: Option<String>,
    },
    /// Transient: the next attempt is due then.
    Retry { due: DateTime<Utc> },
    /// Unknown that `status` did not settle; the janitor's first re-check.
    Review {
        reason: String,
        first_check: Option<DateTime<Utc>>,
    },
}

/// Applies a batch of results in one transaction, with one guarded
/// statement per kind of write. Returns the orders whose transition
/// applied; a write for an order that moved meanwhile (or a stale attempt)
/// applies nothing and is absent.
pub async fn apply_results(
    pool: &PgPool,
    writes: &[(Uuid, i32, ResultWrite)],
) -> sqlx::Result<HashSet<Uuid>> {
    let mut tx = pool.begin().await?;
    let mut applied = HashSet::new();
    applied.extend(finalize_all(&mut tx, writes).await?);
    applied.extend(retry_all(&mut tx, writes).await?);
    applied.extend(review_all(&mut tx, writes).await?);
    tx.commit().await?;
    Ok(applied)
}

async fn finalize_all(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[(Uuid, i32, ResultWrite)],
) -> sqlx::Result<Vec<Uuid>> {
    let (mut ids, mut attempts, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    let (mut refs, mut reasons) = (Vec::new(), Vec::new());
    for (id, attempt, write) in writes {
        if let ResultWrite::Finalize {
            status,
            psp_reference,
            reason,
        } = write
        {
            assert!(status.is_final(), "finalize to {status:?}");
            ids.push(*id);
            attempts.push(*attempt);
            statuses.push(status.as_str());
            refs.push(psp_reference.as_deref());
            reasons.push(reason.as_deref());
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE payment_orders o SET status = t.status, final_attempt = t.attempt, last_applied_attempt = t.attempt,
             psp_reference = t.ref, failure_reason = t.reason, next_attempt = NULL, next_retry_at = NULL, updated_at = now()
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[]) AS t(id, attempt, status, ref, reason)
         WHERE o.payment_order_id = t.id AND o.status = ANY($6) AND o.last_applied_attempt < t.attempt
         RETURNING o.payment_order_id",
    )
    .bind(ids)
    .bind(attempts)
    .bind(statuses)
    .bind(refs)
    .bind(reasons)
    .bind(Transition::Finalize.sources())
    .fetch_all(&mut **tx)
    .await
}

async fn retry_all(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[(Uuid, i32, ResultWrite)],
) -> sqlx::Result<Vec<Uuid>> {
    let (mut ids, mut attempts, mut dues) = (Vec::new(), Vec::new(), Vec::new());
    for (id, attempt, write) in writes {
        if let ResultWrite::Retry { due } = write {
            ids.push(*id);
            attempts.push(*attempt);
            dues.push(*due);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE payment_orders o SET status = 'PENDING', last_applied_attempt = t.attempt, next_attempt = t.attempt + 1,
             next_retry_at = t.due, updated_at = now()
         FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[]) AS t(id, attempt, due)
         WHERE o.payment_order_id = t.id AND o.status = ANY($4) AND o.last_applied_attempt < t.attempt
         RETURNING o.payment_order_id",
    )
    .bind(ids)
    .bind(attempts)
    .bind(dues)
    .bind(Transition::ScheduleRetry.sources())
    .fetch_all(&mut **tx)
    .await
}

async fn review_all(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[(Uuid, i32, ResultWrite)],
) -> sqlx::Result<Vec<Uuid>> {
    let (mut ids, mut attempts, mut reasons, mut checks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, attempt, write) in writes {
        if let ResultWrite::Review {
            reason,
            first_check,
        } = write
        {
            ids.push(*id);
            attempts.push(*attempt);
            reasons.push(reason.as_str());
            checks.push(*first_check);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE payment_orders o SET status = 'REQUIRES_REVIEW', last_applied_attempt = t.attempt, failure_reason = t.reason,
             next_attempt = NULL, next_retry_at = NULL, review_checks = 0, next_review_at = t.first_check, updated_at = now()
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[]) AS t(id, attempt, reason, first_check)
         WHERE o.payment_order_id = t.id AND o.status = ANY($5) AND o.last_applied_attempt < t.attempt
         RETURNING o.payment_order_id",
    )
    .bind(ids)
    .bind(attempts)
    .bind(reasons)
    .bind(checks)
    .bind(Transition::RequireReview.sources())
    .fetch_all(&mut **tx)
    .await
}

/// Many orders by id, in one query.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, OrderRow>> {
    let rows: Vec<OrderRow> =
        sqlx::query_as("SELECT * FROM payment_orders WHERE payment_order_id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|r| (r.payment_order_id, r)).collect())
}

/// Its event went to a DLQ. Only an order still on the road is parked:
/// final stays final, a review stays with its reviewer. A scheduled retry
/// is cancelled, so a queued Redis retry finds the order parked and stale.
pub async fn park(pool: &PgPool, payment_order_id: Uuid, reason: &str) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE payment_orders SET status = 'PARKED', failure_reason = $2,
             next_attempt = NULL, next_retry_at = NULL, updated_at = now()
         WHERE payment_order_id = $1 AND status = ANY($3)",
    )
    .bind(payment_order_id)
    .bind(reason)
    .bind(Transition::Park.sources())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Settles an order in REQUIRES_REVIEW (an admin, or the janitor's `status`
/// answer). False if the order is no longer in review.
pub async fn settle_review(
    tx: &mut Transaction<'_, Postgres>,
    payment_order_id: Uuid,
    status: OrderStatus,
    attempt: i32,
    psp_reference: Option<&str>,
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    assert!(status.is_final(), "settle a review to {status:?}");
    let updated = sqlx::query(
        "UPDATE payment_orders SET status = $2, final_attempt = $3, psp_reference = $4, failure_reason = $5,
             next_review_at = NULL, updated_at = now()
         WHERE payment_order_id = $1 AND status = ANY($6)",
    )
    .bind(payment_order_id)
    .bind(status)
    .bind(attempt)
    .bind(psp_reference)
    .bind(reason)
    .bind(Transition::SettleReview.sources())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Orders in review whose janitor re-check is due.
pub async fn due_reviews(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as(
        "SELECT * FROM payment_orders
         WHERE status = 'REQUIRES_REVIEW' AND next_review_at IS NOT NULL AND next_review_at <= now()
         ORDER BY next_review_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The janitor asked and the PSP still does not know: count the check and
/// set the next one (None: the schedule is spent, an admin decides).
pub async fn next_review(
    pool: &PgPool,
    payment_order_id: Uuid,
    checks: i32,
    next_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payment_orders SET review_checks = $2, next_review_at = $3, updated_at = now()
         WHERE payment_order_id = $1 AND status = 'REQUIRES_REVIEW'",
    )
    .bind(payment_order_id)
    .bind(checks)
    .bind(next_at)
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
