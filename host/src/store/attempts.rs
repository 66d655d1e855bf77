//! psp_attempts: one row per PSP call, claimed before the call.

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::payments::AttemptRow;
use crate::domain::payment::PspOutcome;

pub enum Claim {
    /// This worker owns the attempt: call the PSP.
    New,
    /// Someone claimed it before (a redelivery, or a crash mid-call).
    Existing(Box<AttemptRow>),
}

const ATTEMPT_COLUMNS: &str =
    "payment_order_id, attempt, component_sha256, outcome, code, message, psp_reference,
     latency_ms, settled_by_status, component_calls, claimed_at, lease_until, node_id";

/// Who claims an attempt, and for how long the claim holds off others.
pub struct Claimant<'a> {
    pub node_id: &'a str,
    /// Longer than the holder can possibly be mid-call (validated at start).
    pub lease: std::time::Duration,
}

/// One attempt to claim: (order, attempt, PSP idempotency key, component
/// sha256, trace id).
pub type ClaimRequest = (Uuid, i32, String, String, String);

/// Claims a batch of attempts in the caller's transaction: a new claim for
/// each attempt nobody claimed, the existing row for the others.
pub async fn claim_all(
    tx: &mut Transaction<'_, Postgres>,
    requests: &[ClaimRequest],
    claimant: &Claimant<'_>,
) -> sqlx::Result<HashMap<(Uuid, i32), Claim>> {
    let ids: Vec<Uuid> = requests.iter().map(|r| r.0).collect();
    let attempts: Vec<i32> = requests.iter().map(|r| r.1).collect();
    let keys: Vec<&str> = requests.iter().map(|r| r.2.as_str()).collect();
    let shas: Vec<&str> = requests.iter().map(|r| r.3.as_str()).collect();
    let traces: Vec<&str> = requests.iter().map(|r| r.4.as_str()).collect();
    let inserted: Vec<(Uuid, i32)> = sqlx::query_as(
        "INSERT INTO psp_attempts (payment_order_id, attempt, idempotency_key, component_sha256, trace_id, node_id, lease_until)
         SELECT t.id, t.attempt, t.key, t.sha, t.trace, $6, now() + make_interval(secs => $7)
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[]) AS t(id, attempt, key, sha, trace)
         ON CONFLICT DO NOTHING RETURNING payment_order_id, attempt",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&keys)
    .bind(&shas)
    .bind(&traces)
    .bind(claimant.node_id)
    .bind(claimant.lease.as_secs_f64())
    .fetch_all(&mut **tx)
    .await?;
    let mut claims: HashMap<(Uuid, i32), Claim> = inserted
        .into_iter()
        .map(|pair| (pair, Claim::New))
        .collect();
    if claims.len() < requests.len() {
        let existing: Vec<AttemptRow> = sqlx::query_as(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM psp_attempts
             WHERE (payment_order_id, attempt) IN (SELECT * FROM UNNEST($1::uuid[], $2::int4[]))"
        ))
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&mut **tx)
        .await?;
        for row in existing {
            claims
                .entry((row.payment_order_id, row.attempt))
                .or_insert_with(|| Claim::Existing(Box::new(row)));
        }
    }
    Ok(claims)
}

/// Takes over an open claim whose lease has run out (its holder died or was
/// cut off by the wall-clock cap), or at once when `orphaned` (the holder
/// was this node's earlier life). None if it has an outcome by now or the
/// lease still runs (someone else took it over first).
pub async fn take_over(
    pool: &PgPool,
    payment_order_id: Uuid,
    attempt: i32,
    claimant: &Claimant<'_>,
    orphaned: bool,
) -> sqlx::Result<Option<AttemptRow>> {
    sqlx::query_as(&format!(
        "UPDATE psp_attempts SET node_id = $3, lease_until = now() + make_interval(secs => $4)
         WHERE payment_order_id = $1 AND attempt = $2 AND outcome IS NULL AND (lease_until <= now() OR $5)
         RETURNING {ATTEMPT_COLUMNS}"
    ))
    .bind(payment_order_id)
    .bind(attempt)
    .bind(claimant.node_id)
    .bind(claimant.lease.as_secs_f64())
    .bind(orphaned)
    .fetch_optional(pool)
    .await
}

/// The holder is no longer mid-call (its component failed before any
/// request left): the lease ends now, the claim stays open.
pub async fn release(
    pool: &PgPool,
    payment_order_id: Uuid,
    attempt: i32,
    holder: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE psp_attempts SET lease_until = now()
         WHERE payment_order_id = $1 AND attempt = $2 AND node_id = $3 AND outcome IS NULL",
    )
    .bind(payment_order_id)
    .bind(attempt)
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, payment_order_id: Uuid, attempt: i32) -> sqlx::Result<AttemptRow> {
    sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM psp_attempts WHERE payment_order_id = $1 AND attempt = $2"
    ))
    .bind(payment_order_id)
    .bind(attempt)
    .fetch_one(pool)
    .await
}

/// One attempt's outcome to record.
pub struct Finish {
    pub payment_order_id: Uuid,
    pub attempt: i32,
    pub outcome: PspOutcome,
    pub latency_ms: i64,
    pub settled_by_status: bool,
    pub component_calls: i32,
}

/// Records a batch of outcomes in one statement. Each outcome is recorded
/// once: for an attempt that has one already, nothing changes but the call
/// count, and the first outcome's row is returned.
pub async fn finish_all(
    pool: &PgPool,
    finishes: &[&Finish],
) -> sqlx::Result<HashMap<(Uuid, i32), AttemptRow>> {
    if finishes.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = finishes.iter().map(|f| f.payment_order_id).collect();
    let attempts: Vec<i32> = finishes.iter().map(|f| f.attempt).collect();
    let kinds: Vec<&str> = finishes.iter().map(|f| f.outcome.kind.as_str()).collect();
    let codes: Vec<Option<&str>> = finishes.iter().map(|f| f.outcome.code.as_deref()).collect();
    let messages: Vec<Option<&str>> = finishes
        .iter()
        .map(|f| f.outcome.message.as_deref())
        .collect();
    let refs: Vec<Option<&str>> = finishes
        .iter()
        .map(|f| f.outcome.psp_reference.as_deref())
        .collect();
    let latencies: Vec<i64> = finishes.iter().map(|f| f.latency_ms).collect();
    let settled: Vec<bool> = finishes.iter().map(|f| f.settled_by_status).collect();
    let calls: Vec<i32> = finishes.iter().map(|f| f.component_calls).collect();
    let rows: Vec<AttemptRow> = sqlx::query_as(&format!(
        "UPDATE psp_attempts a SET outcome = COALESCE(a.outcome, t.kind),
             code = CASE WHEN a.outcome IS NULL THEN t.t_code ELSE a.code END,
             message = CASE WHEN a.outcome IS NULL THEN t.t_message ELSE a.message END,
             psp_reference = CASE WHEN a.outcome IS NULL THEN t.ref ELSE a.psp_reference END,
             latency_ms = COALESCE(a.latency_ms, t.latency),
             settled_by_status = CASE WHEN a.outcome IS NULL THEN t.settled ELSE a.settled_by_status END,
             component_calls = a.component_calls + t.calls, finished_at = COALESCE(a.finished_at, now())
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::bool[], $9::int4[])
             AS t(id, n, kind, t_code, t_message, ref, latency, settled, calls)
         WHERE a.payment_order_id = t.id AND a.attempt = t.n
         RETURNING {ATTEMPT_COLUMNS}"
    ))
    .bind(ids)
    .bind(attempts)
    .bind(kinds)
    .bind(codes)
    .bind(messages)
    .bind(refs)
    .bind(latencies)
    .bind(settled)
    .bind(calls)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.payment_order_id, r.attempt), r))
        .collect())
}
