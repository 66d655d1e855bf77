//! "Balances equal postings": every account's balance against the sum of
//! the postings of the journals applied to it.
//!
//! The periodic check keeps per-account sums of the postings applied before
//! a checkpoint and adds only what was applied since, so a round reads the
//! recent postings, not the whole ledger. A journal is stamped by its
//! applying transaction's start; one that commits later than `margin`
//! after that would be missed by the checkpoint and show up as a breach
//! (a false alarm, never a hidden one), which `paynode reconcile` settles.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Accounts in breach, over the whole ledger.
pub async fn full_breaches(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH sums AS (
            SELECT p.account_code, sum(CASE WHEN side = 'debit' THEN amount_minor ELSE 0 END) AS d,
                   sum(CASE WHEN side = 'credit' THEN amount_minor ELSE 0 END) AS c
            FROM postings p JOIN applied_journals a USING (journal_id) GROUP BY p.account_code)
         SELECT count(*) FROM sums FULL JOIN account_balances b USING (account_code)
         WHERE coalesce(sums.d, 0) <> coalesce(b.debit_minor, 0)
            OR coalesce(sums.c, 0) <> coalesce(b.credit_minor, 0)",
    )
    .fetch_one(pool)
    .await
}

/// Accounts in breach, from the checkpointed sums plus the postings applied
/// since; then moves the checkpoint up to `margin_secs` ago. Needs the
/// `reconcile_state` row (made by the round's windowed checks).
pub async fn incremental_breaches(pool: &PgPool, margin_secs: i64) -> sqlx::Result<i64> {
    // One snapshot for balances and postings: a journal applied while we
    // read must be in both or in neither.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let (through, next): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT sums_through, now() - make_interval(secs => $1) FROM reconcile_state",
    )
    .bind(margin_secs as f64)
    .fetch_one(&mut *tx)
    .await?;
    let breaches: i64 = sqlx::query_scalar(
        "WITH expected AS (
            SELECT account_code, sum(d) AS d, sum(c) AS c FROM (
                SELECT account_code, debit_minor AS d, credit_minor AS c FROM reconcile_account_sums
                UNION ALL
                SELECT p.account_code, CASE WHEN side = 'debit' THEN amount_minor ELSE 0 END,
                       CASE WHEN side = 'credit' THEN amount_minor ELSE 0 END
                FROM postings p JOIN applied_journals a USING (journal_id) WHERE a.applied_at > $1
            ) u GROUP BY account_code)
         SELECT count(*) FROM expected FULL JOIN account_balances b USING (account_code)
         WHERE coalesce(expected.d, 0) <> coalesce(b.debit_minor, 0)
            OR coalesce(expected.c, 0) <> coalesce(b.credit_minor, 0)",
    )
    .bind(through)
    .fetch_one(&mut *tx)
    .await?;
    if next > through {
        advance(&mut tx, through, next).await?;
    }
    tx.commit().await?;
    Ok(breaches)
}

async fn advance(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    through: DateTime<Utc>,
    next: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reconcile_account_sums (account_code, debit_minor, credit_minor)
         SELECT p.account_code, sum(CASE WHEN side = 'debit' THEN amount_minor ELSE 0 END),
                sum(CASE WHEN side = 'credit' THEN amount_minor ELSE 0 END)
         FROM postings p JOIN applied_journals a USING (journal_id)
         WHERE a.applied_at > $1 AND a.applied_at <= $2 GROUP BY p.account_code
         ON CONFLICT (account_code) DO UPDATE
           SET debit_minor = reconcile_account_sums.debit_minor + excluded.debit_minor,
               credit_minor = reconcile_account_sums.credit_minor + excluded.credit_minor",
    )
    .bind(through)
    .bind(next)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE reconcile_state SET sums_through = $1")
        .bind(next)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
