//! The integrity checks over the ledger and the pipeline, shared by
//! `paynode reconcile` and the node's periodic reconciliation.

use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub breaches: i64,
    pub detail: String,
}

/// Every check; a check with breaches > 0 fails the run.
pub async fn checks(pool: &PgPool, outbox_age_secs: i64) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let count =
        |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await };

    checks.push(Check {
        name: "journals balance",
        breaches: count(
            "SELECT count(*) FROM (SELECT journal_id FROM postings GROUP BY journal_id, currency
               HAVING sum(CASE WHEN side = 'debit' THEN amount_minor ELSE -amount_minor END) <> 0) j",
        )
        .await?,
        detail: "journals whose debits differ from credits".into(),
    });
    checks.push(Check {
        name: "journals have >= 2 postings",
        breaches: count(
            "SELECT count(*) FROM journal_entries j WHERE (SELECT count(*) FROM postings p WHERE p.journal_id = j.journal_id) < 2",
        )
        .await?,
        detail: "journals with fewer than two postings".into(),
    });
    checks.push(Check {
        name: "balances equal postings",
        breaches: count(
            "WITH sums AS (
                SELECT p.account_code, sum(CASE WHEN side = 'debit' THEN amount_minor ELSE 0 END) AS d,
                       sum(CASE WHEN side = 'credit' THEN amount_minor ELSE 0 END) AS c
                FROM postings p JOIN applied_journals a USING (journal_id) GROUP BY p.account_code)
             SELECT count(*) FROM sums FULL JOIN account_balances b USING (account_code)
             WHERE coalesce(sums.d, 0) <> coalesce(b.debit_minor, 0) OR coalesce(sums.c, 0) <> coalesce(b.credit_minor, 0)",
        )
        .await?,
        detail: "accounts whose balance differs from the sum of applied postings".into(),
    });
    checks.push(Check {
        name: "every journal applied",
        breaches: count(
            "SELECT count(*) FROM journal_entries j WHERE NOT EXISTS (SELECT 1 FROM applied_journals a WHERE a.journal_id = j.journal_id)
               AND j.created_at < now() - interval '60 seconds'",
        )
        .await?,
        detail: "journals recorded over a minute ago but not applied to balances".into(),
    });
    checks.push(Check {
        name: "one ledger recording per finalized order",
        breaches: count(
            "SELECT count(*) FROM payment_orders o WHERE o.status IN ('SUCCEEDED', 'FAILED')
               AND o.updated_at < now() - interval '60 seconds'
               AND (SELECT count(*) FROM ledger_recordings r WHERE r.payment_order_id = o.payment_order_id
                      AND NOT EXISTS (SELECT 1 FROM refunds f WHERE f.finalized_event_id = r.source_event_id)) <> 1",
        )
        .await?,
        detail: "final orders (over a minute) without exactly one ledger recording".into(),
    });
    checks.push(Check {
        name: "succeeded orders are posted",
        breaches: count(
            "SELECT count(*) FROM payment_orders o WHERE o.status = 'SUCCEEDED' AND o.updated_at < now() - interval '60 seconds'
               AND NOT EXISTS (SELECT 1 FROM journal_entries j WHERE j.payment_order_id = o.payment_order_id)",
        )
        .await?,
        detail: "succeeded orders without journal entries".into(),
    });
    checks.push(Check {
        name: "failed orders post nothing",
        breaches: count(
            "SELECT count(*) FROM payment_orders o WHERE o.status = 'FAILED'
               AND EXISTS (SELECT 1 FROM journal_entries j WHERE j.payment_order_id = o.payment_order_id)",
        )
        .await?,
        detail: "failed orders with journal entries".into(),
    });
    checks.push(Check {
        name: "outbox drained",
        breaches: super::outbox::stale_unsent(pool, outbox_age_secs).await?,
        detail: format!("outbox rows unsent for over {outbox_age_secs} s"),
    });
    checks.push(Check {
        name: "no quarantined outbox rows",
        breaches: count("SELECT count(*) FROM outbox_event WHERE status = 'QUARANTINED'").await?,
        detail: "outbox rows that could not be published (see the dispatcher's error log)".into(),
    });
    checks.push(Check {
        name: "no order stuck",
        breaches: count(
            "SELECT count(*) FROM payment_orders WHERE status IN ('INITIATED', 'PENDING')
               AND coalesce(next_retry_at, created_at) < now() - interval '10 minutes'",
        )
        .await?,
        detail: "non-final orders idle past their retry horizon (10 min)".into(),
    });
    checks.push(Check {
        name: "at most one successful attempt per order",
        breaches: count(
            "SELECT count(*) FROM (SELECT payment_order_id FROM psp_attempts WHERE outcome = 'succeeded'
               GROUP BY payment_order_id HAVING count(*) > 1) x",
        )
        .await?,
        detail: "orders with more than one succeeded PSP attempt".into(),
    });
    checks.push(Check {
        name: "refunds within the capture",
        breaches: count(
            "SELECT count(*) FROM (SELECT o.payment_order_id FROM payment_orders o JOIN refunds r USING (payment_order_id)
               WHERE r.status = 'SUCCEEDED' GROUP BY o.payment_order_id, o.amount_minor, o.status
               HAVING sum(r.amount_minor) > o.amount_minor OR o.status <> 'SUCCEEDED') x",
        )
        .await?,
        detail: "orders whose succeeded refunds exceed what they captured (or that are not SUCCEEDED)".into(),
    });
    checks.push(Check {
        name: "one journal per succeeded refund",
        breaches: count(
            "SELECT count(*) FROM refunds r WHERE r.status = 'SUCCEEDED' AND r.updated_at < now() - interval '60 seconds'
               AND (SELECT count(*) FROM journal_entries j WHERE j.source_event_id = r.finalized_event_id) <> 1",
        )
        .await?,
        detail: "succeeded refunds (over a minute) without exactly one journal".into(),
    });
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
