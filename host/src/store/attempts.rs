//! psp_attempts: one row per PSP call, claimed before the call.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::payments::AttemptRow;
use crate::domain::payment::PspOutcome;

pub enum Claim {
    /// This worker owns the attempt: call the PSP.
    New,
    /// Someone claimed it before (a redelivery, or a crash mid-call).
    Existing(AttemptRow),
}

const ATTEMPT_COLUMNS: &str =
    "payment_order_id, attempt, component_sha256, outcome, code, message, psp_reference,
     latency_ms, settled_by_status, component_calls, claimed_at";

pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    payment_order_id: Uuid,
    attempt: i32,
    idempotency_key: &str,
    component_sha256: &str,
    trace_id: &str,
    node_id: &str,
) -> sqlx::Result<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO psp_attempts (payment_order_id, attempt, idempotency_key, component_sha256, trace_id, node_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(payment_order_id)
    .bind(attempt)
    .bind(idempotency_key)
    .bind(component_sha256)
    .bind(trace_id)
    .bind(node_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let row = sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM psp_attempts WHERE payment_order_id = $1 AND attempt = $2"
    ))
    .bind(payment_order_id)
    .bind(attempt)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Claim::Existing(row))
}

/// Records the outcome once; a second finish of the same attempt changes
/// nothing and returns the first outcome's row.
pub async fn finish(
    pool: &PgPool,
    payment_order_id: Uuid,
    attempt: i32,
    outcome: &PspOutcome,
    latency_ms: i64,
    settled_by_status: bool,
    component_calls: i32,
) -> sqlx::Result<AttemptRow> {
    sqlx::query_as(&format!(
        "UPDATE psp_attempts SET outcome = COALESCE(outcome, $3), code = CASE WHEN outcome IS NULL THEN $4 ELSE code END,
             message = CASE WHEN outcome IS NULL THEN $5 ELSE message END,
             psp_reference = CASE WHEN outcome IS NULL THEN $6 ELSE psp_reference END,
             latency_ms = COALESCE(latency_ms, $7),
             settled_by_status = CASE WHEN outcome IS NULL THEN $8 ELSE settled_by_status END,
             component_calls = component_calls + $9, finished_at = COALESCE(finished_at, now())
         WHERE payment_order_id = $1 AND attempt = $2
         RETURNING {ATTEMPT_COLUMNS}"
    ))
    .bind(payment_order_id)
    .bind(attempt)
    .bind(outcome.kind.as_str())
    .bind(&outcome.code)
    .bind(&outcome.message)
    .bind(&outcome.psp_reference)
    .bind(latency_ms)
    .bind(settled_by_status)
    .bind(component_calls)
    .fetch_one(pool)
    .await
}
