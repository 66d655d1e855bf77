//! The integrity checks over the ledger and the pipeline, shared by
//! `paynode reconcile` (everything, every time) and the node's periodic
//! reconciliation (incremental: what changed since its last round).

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub breaches: i64,
    pub detail: String,
}

/// A check over rows stamped at or after `$1`, returning the subjects (a
/// journal, an order or a refund id) in breach; `$2` (text[], or NULL for all)
/// narrows it to known subjects when an open breach is re-checked.
struct Windowed {
    name: &'static str,
    detail: &'static str,
    sql: &'static str,
}

const WINDOWED: &[Windowed] = &[
    Windowed {
        name: "journals balance",
        detail: "journals whose debits differ from credits",
        sql: "SELECT DISTINCT journal_id FROM (
                SELECT j.journal_id FROM journal_entries j JOIN postings p USING (journal_id)
                WHERE j.created_at >= $1 AND ($2::text[] IS NULL OR j.journal_id = ANY($2))
                GROUP BY j.journal_id, p.currency
                HAVING sum(CASE WHEN p.side = 'debit' THEN p.amount_minor ELSE -p.amount_minor END) <> 0) x",
    },
    Windowed {
        name: "journals have >= 2 postings",
        detail: "journals with fewer than two postings",
        sql: "SELECT j.journal_id FROM journal_entries j
              WHERE j.created_at >= $1 AND ($2::text[] IS NULL OR j.journal_id = ANY($2))
                AND (SELECT count(*) FROM postings p WHERE p.journal_id = j.journal_id) < 2",
    },
    Windowed {
        name: "every journal applied",
        detail: "journals recorded over a minute ago but not applied to balances",
        sql: "SELECT j.journal_id FROM journal_entries j
              WHERE j.created_at >= $1 AND j.created_at < now() - interval '60 seconds'
                AND ($2::text[] IS NULL OR j.journal_id = ANY($2))
                AND NOT EXISTS (SELECT 1 FROM applied_journals a WHERE a.journal_id = j.journal_id)",
    },
    Windowed {
        name: "one ledger recording per finalized order",
        detail: "final orders (over a minute) without exactly one ledger recording",
        sql: "SELECT o.payment_order_id::text FROM payment_orders o
              WHERE o.status IN ('SUCCEEDED', 'FAILED')
                AND o.updated_at >= $1 AND o.updated_at < now() - interval '60 seconds'
                AND ($2::text[] IS NULL OR o.payment_order_id = ANY($2::text[]::uuid[]))
                AND (SELECT count(*) FROM ledger_recordings r WHERE r.payment_order_id = o.payment_order_id
                       AND NOT EXISTS (SELECT 1 FROM refunds f WHERE f.finalized_event_id = r.source_event_id)) <> 1",
    },
    Windowed {
        name: "succeeded orders are posted",
        detail: "succeeded orders without journal entries",
        sql: "SELECT o.payment_order_id::text FROM payment_orders o
              WHERE o.status = 'SUCCEEDED'
                AND o.updated_at >= $1 AND o.updated_at < now() - interval '60 seconds'
                AND ($2::text[] IS NULL OR o.payment_order_id = ANY($2::text[]::uuid[]))
                AND NOT EXISTS (SELECT 1 FROM journal_entries j WHERE j.payment_order_id = o.payment_order_id)",
    },
    Windowed {
        name: "failed orders post nothing",
        detail: "failed orders with journal entries",
        sql: "SELECT o.payment_order_id::text FROM payment_orders o
              WHERE o.status = 'FAILED' AND o.updated_at >= $1
                AND ($2::text[] IS NULL OR o.payment_order_id = ANY($2::text[]::uuid[]))
                AND EXISTS (SELECT 1 FROM journal_entries j WHERE j.payment_order_id = o.payment_order_id)",
    },
    Windowed {
        name: "at most one successful attempt per order",
        detail: "orders with more than one succeeded PSP attempt",
        sql: "SELECT a.payment_order_id::text FROM psp_attempts a
              WHERE a.outcome = 'succeeded' AND a.payment_order_id IN (
                  SELECT payment_order_id FROM psp_attempts
                  WHERE outcome = 'succeeded' AND finished_at >= $1
                    AND ($2::text[] IS NULL OR payment_order_id = ANY($2::text[]::uuid[])))
              GROUP BY a.payment_order_id HAVING count(*) > 1",
    },
    Windowed {
        name: "refunds within the capture",
        detail: "orders whose refunds not FAILED (succeeded or pending) exceed what they captured, or that are not SUCCEEDED",
        sql: "SELECT o.payment_order_id::text FROM payment_orders o
              WHERE o.payment_order_id IN (
                  SELECT r.payment_order_id FROM refunds r
                  WHERE r.updated_at >= $1
                    AND ($2::text[] IS NULL OR r.payment_order_id = ANY($2::text[]::uuid[])))
                AND (o.status <> 'SUCCEEDED'
                     OR (SELECT sum(r.amount_minor) FROM refunds r
                         WHERE r.payment_order_id = o.payment_order_id AND r.status <> 'FAILED') > o.amount_minor)",
    },
    Windowed {
        name: "one journal per succeeded refund",
        detail: "succeeded refunds (over a minute) without exactly one journal",
        sql: "SELECT r.refund_id::text FROM refunds r
              WHERE r.status = 'SUCCEEDED'
                AND r.updated_at >= $1 AND r.updated_at < now() - interval '60 seconds'
                AND ($2::text[] IS NULL OR r.refund_id = ANY($2::text[]::uuid[]))
                AND (SELECT count(*) FROM journal_entries j
                     WHERE j.payment_order_id = r.payment_order_id
                       AND j.source_event_id = r.finalized_event_id) <> 1",
    },
];

/// Every check over all the data (`paynode reconcile`, tests).
pub async fn checks(pool: &PgPool, outbox_age_secs: i64) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for check in WINDOWED {
        let subjects = breaching(pool, check, None, None).await?;
        checks.push(Check {
            name: check.name,
            breaches: subjects.len() as i64,
            detail: check.detail.into(),
        });
    }
    checks.push(Check {
        name: "balances equal postings",
        breaches: super::reconcile_sums::full_breaches(pool).await?,
        detail: BALANCES_DETAIL.into(),
    });
    checks.extend(state_checks(pool, outbox_age_secs).await?);
    Ok(checks)
}

/// One periodic round: the windowed checks over rows stamped since the last
/// round (minus `margin`, for transactions that committed late), the open
/// breaches re-checked, the balances against checkpointed sums. The caller
/// holds the reconcile leadership. The result counts open breaches.
pub async fn incremental(
    pool: &PgPool,
    outbox_age_secs: i64,
    margin_secs: i64,
) -> anyhow::Result<Vec<Check>> {
    let mut tx = pool.begin().await?;
    let since = window_start(&mut tx, margin_secs).await?;
    let mut checks = Vec::new();
    for check in WINDOWED {
        checks.push(Check {
            name: check.name,
            breaches: refresh_breaches(&mut tx, check, since).await?,
            detail: check.detail.into(),
        });
    }
    // Rows younger than a minute are excluded by some checks: the next
    // round's window must still reach them.
    sqlx::query("UPDATE reconcile_state SET checked_until = now() - interval '60 seconds'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    checks.push(Check {
        name: "balances equal postings",
        breaches: super::reconcile_sums::incremental_breaches(pool, margin_secs).await?,
        detail: BALANCES_DETAIL.into(),
    });
    checks.extend(state_checks(pool, outbox_age_secs).await?);
    Ok(checks)
}

const BALANCES_DETAIL: &str = "accounts whose balance differs from the sum of applied postings";

/// The start of this round's window; the first round ever starts at the
/// epoch (before any row, so it is a full check).
async fn window_start(
    tx: &mut Transaction<'_, Postgres>,
    margin_secs: i64,
) -> sqlx::Result<chrono::DateTime<chrono::Utc>> {
    sqlx::query(
        "INSERT INTO reconcile_state (checked_until, sums_through) VALUES ('epoch', 'epoch')
         ON CONFLICT (id) DO NOTHING",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query_scalar(
        "SELECT CASE WHEN checked_until = 'epoch' THEN checked_until
                     ELSE checked_until - make_interval(secs => $1) END
         FROM reconcile_state FOR UPDATE",
    )
    .bind(margin_secs as f64)
    .fetch_one(&mut **tx)
    .await
}

/// Records new breaches in the window, drops open ones that cleared, and
/// returns how many stay open.
async fn refresh_breaches(
    tx: &mut Transaction<'_, Postgres>,
    check: &Windowed,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<i64> {
    let open: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM reconcile_breaches WHERE check_name = $1")
            .bind(check.name)
            .fetch_all(&mut **tx)
            .await?;
    let still = breaching(&mut **tx, check, None, Some(open.as_slice())).await?;
    let new = breaching(&mut **tx, check, Some(since), None).await?;
    sqlx::query(
        "DELETE FROM reconcile_breaches WHERE check_name = $1 AND subject = ANY($2)
                                          AND NOT subject = ANY($3)",
    )
    .bind(check.name)
    .bind(&open)
    .bind(&still)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO reconcile_breaches (check_name, subject) SELECT $1, unnest($2::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(check.name)
    .bind(&new)
    .execute(&mut **tx)
    .await?;
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconcile_breaches WHERE check_name = $1")
            .bind(check.name)
            .fetch_one(&mut **tx)
            .await?;
    Ok(open)
}

/// The subjects in breach: stamped since `since` (all when None), among
/// `only` when given.
async fn breaching<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    check: &Windowed,
    since: Option<chrono::DateTime<chrono::Utc>>,
    only: Option<&[String]>,
) -> sqlx::Result<Vec<String>> {
    if only.is_some_and(|subjects| subjects.is_empty()) {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(check.sql)
        .bind(since.unwrap_or(chrono::DateTime::UNIX_EPOCH))
        .bind(only)
        .fetch_all(executor)
        .await
}

/// Counts over small, indexed sets (open, parked, unsent, quarantined
/// rows): cheap enough to run whole every round.
async fn state_checks(pool: &PgPool, outbox_age_secs: i64) -> anyhow::Result<Vec<Check>> {
    let count =
        |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await };
    let mut checks = vec![
        Check {
            name: "outbox drained",
            breaches: super::outbox::stale_unsent(pool, outbox_age_secs).await?,
            detail: format!("outbox rows unsent for over {outbox_age_secs} s"),
        },
        Check {
            name: "no quarantined outbox rows",
            breaches: count("SELECT count(*) FROM outbox_event WHERE status = 'QUARANTINED'")
                .await?,
            detail: "outbox rows that could not be published (see the dispatcher's error log)"
                .into(),
        },
        Check {
            name: "no order stuck",
            breaches: count(
                "SELECT count(*) FROM payment_orders WHERE status IN ('INITIATED', 'PENDING')
                   AND coalesce(next_retry_at, created_at) < now() - interval '10 minutes'",
            )
            .await?,
            detail: "non-final orders idle past their retry horizon (10 min)".into(),
        },
    ];
    let parked = count("SELECT count(*) FROM payment_orders WHERE status = 'PARKED'").await?;
    let review =
        count("SELECT count(*) FROM payment_orders WHERE status = 'REQUIRES_REVIEW'").await?;
    checks.push(Check {
        name: "parked orders (DLQ)",
        breaches: parked,
        detail: format!("{parked} orders parked with their event in a DLQ; {review} in REQUIRES_REVIEW (reported, not a breach)"),
    });
    Ok(checks)
}
