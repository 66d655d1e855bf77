//! journal_entries, postings, ledger_recordings, account_balances.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::events::{LedgerEntriesRecorded, RecordedJournal};

/// The recording made for a source event, if any (a replay re-emits it).
pub async fn find_recording(
    pool: &PgPool,
    source_event_id: Uuid,
) -> sqlx::Result<Option<LedgerEntriesRecorded>> {
    let value: Option<Value> = sqlx::query_scalar(
        "SELECT recorded_event FROM ledger_recordings WHERE source_event_id = $1",
    )
    .bind(source_event_id)
    .fetch_optional(pool)
    .await?;
    Ok(value.map(|v| serde_json::from_value(v).expect("recordings are written by this code")))
}

/// Writes journals, postings and the recording in one transaction. When a
/// concurrent writer recorded this source event first, returns its recording.
pub async fn record(
    pool: &PgPool,
    recorded: &LedgerEntriesRecorded,
    trace_id: &str,
) -> sqlx::Result<LedgerEntriesRecorded> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO ledger_recordings (source_event_id, payment_order_id, rule_sha256, recorded_event)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(recorded.source_event_id)
    .bind(recorded.payment_order_id)
    .bind(&recorded.rule_sha256)
    .bind(serde_json::to_value(recorded).expect("serializes"))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(find_recording(pool, recorded.source_event_id)
            .await?
            .expect("conflicting recording exists"));
    }
    for journal in &recorded.journals {
        insert_journal(&mut tx, recorded, journal, trace_id).await?;
    }
    tx.commit().await?;
    Ok(recorded.clone())
}

async fn insert_journal(
    tx: &mut Transaction<'_, Postgres>,
    recorded: &LedgerEntriesRecorded,
    journal: &RecordedJournal,
    trace_id: &str,
) -> sqlx::Result<()> {
    // Journal ids are deterministic; a journal already present (same order,
    // kind and key from another source event) is a duplicate, not new money.
    let inserted = sqlx::query(
        "INSERT INTO journal_entries (journal_id, payment_order_id, seller_id, kind, currency, source_event_id, rule_sha256, trace_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&journal.journal_id)
    .bind(recorded.payment_order_id)
    .bind(&recorded.seller_id)
    .bind(&journal.kind)
    .bind(&journal.currency)
    .bind(recorded.source_event_id)
    .bind(&recorded.rule_sha256)
    .bind(trace_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    let accounts: Vec<&str> = journal
        .postings
        .iter()
        .map(|p| p.account.as_str())
        .collect();
    let sides: Vec<&str> = journal.postings.iter().map(|p| p.side.as_str()).collect();
    let amounts: Vec<i64> = journal.postings.iter().map(|p| p.amount_minor).collect();
    sqlx::query(
        "INSERT INTO postings (journal_id, account_code, side, amount_minor, currency)
         SELECT $1, account, side, amount, $5 FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS t(account, side, amount)",
    )
    .bind(&journal.journal_id)
    .bind(&accounts)
    .bind(&sides)
    .bind(&amounts)
    .bind(&journal.currency)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies journals to balances exactly once each. Deltas are summed per
/// account first and accounts are updated in sorted order: platform accounts
/// are hot rows, and a fixed lock order avoids deadlocks between workers.
/// Returns the new (account, debit, credit, version) of touched accounts.
pub async fn apply_to_balances(
    pool: &PgPool,
    journal_ids: &[String],
) -> anyhow::Result<Vec<BalanceRow>> {
    let mut tx = pool.begin().await?;
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO applied_journals (journal_id) SELECT id FROM UNNEST($1::text[]) AS t(id)
         ON CONFLICT DO NOTHING RETURNING journal_id",
    )
    .bind(journal_ids)
    .fetch_all(&mut *tx)
    .await?;
    if fresh.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let postings: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT account_code, currency, side, amount_minor FROM postings WHERE journal_id = ANY($1)",
    )
    .bind(&fresh)
    .fetch_all(&mut *tx)
    .await?;
    let deltas = sum_deltas(postings)?;
    let mut rows = Vec::with_capacity(deltas.len());
    for (account, (currency, debit, credit)) in deltas {
        let row: BalanceRow = sqlx::query_as(
            "INSERT INTO account_balances (account_code, currency, debit_minor, credit_minor, version)
             VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (account_code) DO UPDATE SET debit_minor = account_balances.debit_minor + EXCLUDED.debit_minor,
                 credit_minor = account_balances.credit_minor + EXCLUDED.credit_minor,
                 version = account_balances.version + 1, updated_at = now()
             RETURNING account_code, currency, debit_minor, credit_minor, version",
        )
        .bind(&account)
        .bind(&currency)
        .bind(debit)
        .bind(credit)
        .fetch_one(&mut *tx)
        .await?;
        rows.push(row);
    }
    tx.commit().await?;
    Ok(rows)
}

/// Per-account (currency, debit, credit) sums of postings. Checked: an
/// overflow is this batch's error, never a wrapped balance (intake caps
/// amounts so it needs millions of payments; Postgres checks the `+` in
/// the UPDATE the same way).
fn sum_deltas(
    postings: Vec<(String, String, String, i64)>,
) -> anyhow::Result<BTreeMap<String, (String, i64, i64)>> {
    let mut deltas: BTreeMap<String, (String, i64, i64)> = BTreeMap::new();
    for (account, currency, side, amount) in postings {
        let delta = deltas.entry(account.clone()).or_insert((currency, 0, 0));
        let total = if side == "debit" {
            &mut delta.1
        } else {
            &mut delta.2
        };
        *total = total
            .checked_add(amount)
            .with_context(|| format!("balance delta of {account} overflows i64"))?;
    }
    Ok(deltas)
}

#[derive(sqlx::FromRow, Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BalanceRow {
    pub account_code: String,
    pub currency: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub version: i64,
}

pub async fn balances_of_owner(pool: &PgPool, owner: &str) -> sqlx::Result<Vec<BalanceRow>> {
    sqlx::query_as(
        "SELECT account_code, currency, debit_minor, credit_minor, version FROM account_balances
         WHERE split_part(account_code, '.', 2) = $1 ORDER BY account_code",
    )
    .bind(owner)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(account: &str, side: &str, amount: i64) -> (String, String, String, i64) {
        (account.into(), "EUR".into(), side.into(), amount)
    }

    #[test]
    fn deltas_sum_per_account_and_side() {
        let deltas = sum_deltas(vec![
            posting("A.GLOBAL.EUR", "debit", 100),
            posting("A.GLOBAL.EUR", "debit", 50),
            posting("A.GLOBAL.EUR", "credit", 7),
        ])
        .unwrap();
        assert_eq!(deltas["A.GLOBAL.EUR"], ("EUR".to_string(), 150, 7));
    }

    #[test]
    fn an_overflowing_delta_is_an_error_not_a_wrap() {
        let error = sum_deltas(vec![
            posting("A.GLOBAL.EUR", "debit", 1 << 62),
            posting("A.GLOBAL.EUR", "debit", 1 << 62),
        ])
        .unwrap_err();
        assert!(format!("{error:#}").contains("overflows"), "{error:#}");
    }
}
