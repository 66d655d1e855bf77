//! journal_entries, postings, ledger_recordings, account_balances.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::events::LedgerEntriesRecorded;

/// The recordings already made for these source events (a replay re-emits
/// them), in one query.
pub async fn find_recordings(
    pool: &PgPool,
    source_event_ids: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, LedgerEntriesRecorded>> {
    let rows: Vec<(Uuid, Value)> = sqlx::query_as(
        "SELECT source_event_id, recorded_event FROM ledger_recordings WHERE source_event_id = ANY($1)",
    )
    .bind(source_event_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, v)| {
            (
                id,
                serde_json::from_value(v).expect("recordings are written by this code"),
            )
        })
        .collect())
}

/// Writes a batch of recordings, their journals and postings in one
/// transaction, three set-based statements (plus a rare fix-up). A source
/// event recorded meanwhile by a concurrent writer keeps that recording; a
/// journal already present (same order, kind and key from another source
/// event) was recorded there, so a recording lists only the journals it
/// wrote. Returns the recording of every source event.
pub async fn record_all(
    pool: &PgPool,
    batch: &[(&LedgerEntriesRecorded, &str)],
) -> sqlx::Result<HashMap<Uuid, LedgerEntriesRecorded>> {
    let mut tx = pool.begin().await?;
    let claimed = insert_recordings(&mut tx, batch).await?;
    let mine: Vec<(&LedgerEntriesRecorded, &str)> = batch
        .iter()
        .copied()
        .filter(|(r, _)| claimed.contains(&r.source_event_id))
        .collect();
    let written = insert_journals(&mut tx, &mine).await?;
    insert_postings(&mut tx, &mine, &written).await?;
    let mut recordings = HashMap::new();
    for (recorded, _) in &mine {
        let mut kept = (*recorded).clone();
        kept.journals.retain(|j| written.contains(&j.journal_id));
        if kept.journals.len() != recorded.journals.len() {
            sqlx::query(
                "UPDATE ledger_recordings SET recorded_event = $2 WHERE source_event_id = $1",
            )
            .bind(kept.source_event_id)
            .bind(serde_json::to_value(&kept).expect("serializes"))
            .execute(&mut *tx)
            .await?;
        }
        recordings.insert(kept.source_event_id, kept);
    }
    tx.commit().await?;
    let others: Vec<Uuid> = batch
        .iter()
        .map(|(r, _)| r.source_event_id)
        .filter(|id| !recordings.contains_key(id))
        .collect();
    if !others.is_empty() {
        recordings.extend(find_recordings(pool, &others).await?);
    }
    Ok(recordings)
}

async fn insert_recordings(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[(&LedgerEntriesRecorded, &str)],
) -> sqlx::Result<HashSet<Uuid>> {
    let ids: Vec<Uuid> = batch.iter().map(|(r, _)| r.source_event_id).collect();
    let orders: Vec<Uuid> = batch.iter().map(|(r, _)| r.payment_order_id).collect();
    let rules: Vec<&str> = batch.iter().map(|(r, _)| r.rule_sha256.as_str()).collect();
    let events: Vec<Value> = batch
        .iter()
        .map(|(r, _)| serde_json::to_value(r).expect("serializes"))
        .collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO ledger_recordings (source_event_id, payment_order_id, rule_sha256, recorded_event)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[])
         ON CONFLICT DO NOTHING RETURNING source_event_id",
    )
    .bind(ids)
    .bind(orders)
    .bind(rules)
    .bind(events)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Inserts the journals; returns the ids actually written.
async fn insert_journals(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[(&LedgerEntriesRecorded, &str)],
) -> sqlx::Result<HashSet<String>> {
    let mut columns: JournalColumns = Default::default();
    for (recorded, trace_id) in batch {
        for journal in &recorded.journals {
            columns.ids.push(&journal.journal_id);
            columns.orders.push(recorded.payment_order_id);
            columns.sellers.push(&recorded.seller_id);
            columns.kinds.push(&journal.kind);
            columns.currencies.push(&journal.currency);
            columns.sources.push(recorded.source_event_id);
            columns.rules.push(&recorded.rule_sha256);
            columns.traces.push(trace_id);
        }
    }
    if columns.ids.is_empty() {
        return Ok(HashSet::new());
    }
    let written: Vec<String> = sqlx::query_scalar(
        "INSERT INTO journal_entries (journal_id, payment_order_id, seller_id, kind, currency, source_event_id, rule_sha256, trace_id)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[], $8::text[])
         ON CONFLICT DO NOTHING RETURNING journal_id",
    )
    .bind(columns.ids)
    .bind(columns.orders)
    .bind(columns.sellers)
    .bind(columns.kinds)
    .bind(columns.currencies)
    .bind(columns.sources)
    .bind(columns.rules)
    .bind(columns.traces)
    .fetch_all(&mut **tx)
    .await?;
    Ok(written.into_iter().collect())
}

#[derive(Default)]
struct JournalColumns<'a> {
    ids: Vec<&'a str>,
    orders: Vec<Uuid>,
    sellers: Vec<&'a str>,
    kinds: Vec<&'a str>,
    currencies: Vec<&'a str>,
    sources: Vec<Uuid>,
    rules: Vec<&'a str>,
    traces: Vec<&'a str>,
}

async fn insert_postings(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[(&LedgerEntriesRecorded, &str)],
    written: &HashSet<String>,
) -> sqlx::Result<()> {
    let (mut journals, mut accounts, mut sides, mut amounts, mut currencies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let fresh = batch
        .iter()
        .flat_map(|(r, _)| &r.journals)
        .filter(|j| written.contains(&j.journal_id));
    for journal in fresh {
        for posting in &journal.postings {
            journals.push(journal.journal_id.as_str());
            accounts.push(posting.account.as_str());
            sides.push(posting.side.as_str());
            amounts.push(posting.amount_minor);
            currencies.push(journal.currency.as_str());
        }
    }
    if journals.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO postings (journal_id, account_code, side, amount_minor, currency)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])",
    )
    .bind(journals)
    .bind(accounts)
    .bind(sides)
    .bind(amounts)
    .bind(currencies)
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
