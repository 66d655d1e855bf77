//! Intake's group writes: one statement per table for a whole group of
//! payments (`UNNEST` arrays, `ON CONFLICT … RETURNING` to learn which rows
//! won), so a group of 64 payments costs the same six round trips as one.
//!
//! Every document (outbox envelope, stored response) arrives as JSON text and
//! is cast to `jsonb` by Postgres, so the single writer task serializing a
//! group does no JSON work of its own.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::payments::psp_idempotency_key;

/// One accepted payment as intake writes it, built in memory before the
/// group transaction.
pub struct NewPayment {
    pub payment_id: Uuid,
    pub client_id: String,
    pub idempotency_key: String,
    pub request_sha256: String,
    pub buyer_id: String,
    pub order_id: String,
    pub total_minor: i64,
    pub currency: String,
    pub trace_id: String,
    pub orders: Vec<NewOrder>,
    /// The 202 body, stored for replays (JSON text).
    pub response_json: String,
}

pub struct NewOrder {
    pub payment_order_id: Uuid,
    pub seller_id: String,
    pub amount_minor: i64,
    /// Its `payment_order_created` outbox row: event id and envelope (JSON text).
    pub event_id: Uuid,
    pub envelope_json: String,
}

pub struct StoredResponse {
    pub request_sha256: String,
    pub status: i32,
    pub body: Value,
}

/// The statement that opens a group's transaction: every statement in it
/// ends after `ms` on the server side, so a group whose caller gave up never
/// keeps its locks past that. One round trip with the BEGIN.
pub fn begin_bounded(ms: u64) -> String {
    format!("BEGIN; SET LOCAL statement_timeout = {ms}")
}

/// Tries the transaction-scoped advisory lock of each key; `false` at index
/// i means another transaction (another node's group) holds key i. Never
/// waits, so groups cannot deadlock on keys.
pub async fn try_lock_keys(conn: &mut PgConnection, lock_ids: &[i64]) -> sqlx::Result<Vec<bool>> {
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT n, pg_try_advisory_xact_lock(id)
         FROM UNNEST($1::bigint[]) WITH ORDINALITY AS t(id, n) ORDER BY n",
    )
    .bind(lock_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(_, locked)| locked).collect())
}

/// Stored responses of `(client, key)` pairs, by index into `keys`; keys
/// older than `retention_secs` are expired and not returned (their request
/// is a new one), whether or not the purge has deleted them yet.
pub async fn stored_responses(
    conn: &mut PgConnection,
    keys: &[(&str, &str)],
    retention_secs: u64,
) -> sqlx::Result<HashMap<usize, StoredResponse>> {
    let clients: Vec<&str> = keys.iter().map(|(c, _)| *c).collect();
    let idempotency_keys: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
    let rows: Vec<(i64, String, i32, Value)> = sqlx::query_as(
        "SELECT t.n, i.request_sha256, i.response_status, i.response_body
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(client_id, key, n)
         JOIN idempotency_keys i ON i.client_id = t.client_id AND i.idempotency_key = t.key
         WHERE i.created_at > now() - $3::bigint * interval '1 second'",
    )
    .bind(&clients)
    .bind(&idempotency_keys)
    .bind(retention_secs as i64)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(n, request_sha256, status, body)| {
            let response = StoredResponse {
                request_sha256,
                status,
                body,
            };
            (n as usize - 1, response)
        })
        .collect())
}

/// Inserts the payments; returns the ids that were inserted. A payment
/// missing from the answer lost on (client, orderId) to an existing one or
/// to an earlier one of the same statement.
///
/// Rows go in (client, orderId) order: two concurrent groups that share
/// orderIds then wait for each other in one order and cannot deadlock.
pub async fn insert_payments(
    conn: &mut PgConnection,
    payments: &[&NewPayment],
) -> sqlx::Result<HashSet<Uuid>> {
    let mut sorted = payments.to_vec();
    sorted.sort_by(|a, b| (&a.client_id, &a.order_id).cmp(&(&b.client_id, &b.order_id)));
    let column = |f: fn(&NewPayment) -> &str| sorted.iter().map(|p| f(p)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = sorted.iter().map(|p| p.payment_id).collect();
    let totals: Vec<i64> = sorted.iter().map(|p| p.total_minor).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO payments (payment_id, client_id, buyer_id, order_id, total_amount_minor, currency, trace_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[])
         ON CONFLICT ON CONSTRAINT payments_client_order_unique DO NOTHING
         RETURNING payment_id",
    )
    .bind(&ids)
    .bind(column(|p| &p.client_id))
    .bind(column(|p| &p.buyer_id))
    .bind(column(|p| &p.order_id))
    .bind(&totals)
    .bind(column(|p| &p.currency))
    .bind(column(|p| &p.trace_id))
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// The orders of every payment, and one outbox row per order (topic `topic`).
pub async fn insert_orders_and_events(
    conn: &mut PgConnection,
    payments: &[&NewPayment],
    topic: &str,
) -> sqlx::Result<()> {
    let orders = || {
        payments
            .iter()
            .flat_map(|p| p.orders.iter().map(move |o| (*p, o)))
    };
    let ids: Vec<Uuid> = orders().map(|(_, o)| o.payment_order_id).collect();
    let payment_ids: Vec<Uuid> = orders().map(|(p, _)| p.payment_id).collect();
    let sellers: Vec<&str> = orders().map(|(_, o)| o.seller_id.as_str()).collect();
    let amounts: Vec<i64> = orders().map(|(_, o)| o.amount_minor).collect();
    let currencies: Vec<&str> = orders().map(|(p, _)| p.currency.as_str()).collect();
    let psp_keys: Vec<String> = ids.iter().map(|id| psp_idempotency_key(*id)).collect();
    sqlx::query(
        "INSERT INTO payment_orders (payment_order_id, payment_id, seller_id, amount_minor, currency, psp_idempotency_key)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[])",
    )
    .bind(&ids)
    .bind(&payment_ids)
    .bind(&sellers)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&psp_keys)
    .execute(&mut *conn)
    .await?;

    let event_ids: Vec<Uuid> = orders().map(|(_, o)| o.event_id).collect();
    let message_keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let envelopes: Vec<&str> = orders().map(|(_, o)| o.envelope_json.as_str()).collect();
    super::outbox::append_json(conn, topic, &event_ids, &message_keys, &envelopes).await
}

/// The idempotency record (request hash + 202 response) of every payment.
/// An expired record of the same key not purged yet is replaced; an
/// unexpired one cannot be there (the key's lock is held and its stored
/// response was read first), and if it were, the group fails rather than
/// leave a payment without its record.
pub async fn insert_responses(
    conn: &mut PgConnection,
    payments: &[&NewPayment],
    retention_secs: u64,
) -> sqlx::Result<()> {
    let column = |f: fn(&NewPayment) -> &str| payments.iter().map(|p| f(p)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = payments.iter().map(|p| p.payment_id).collect();
    let written = sqlx::query(
        "INSERT INTO idempotency_keys (client_id, idempotency_key, request_sha256, payment_id, response_status, response_body)
         SELECT client_id, key, sha, id, 202, body::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[]) AS t(client_id, key, sha, id, body)
         ON CONFLICT (client_id, idempotency_key) DO UPDATE
         SET request_sha256 = EXCLUDED.request_sha256, payment_id = EXCLUDED.payment_id,
             response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,
             created_at = now()
         WHERE idempotency_keys.created_at <= now() - $6::bigint * interval '1 second'",
    )
    .bind(column(|p| &p.client_id))
    .bind(column(|p| &p.idempotency_key))
    .bind(column(|p| &p.request_sha256))
    .bind(&ids)
    .bind(column(|p| &p.response_json))
    .bind(retention_secs as i64)
    .execute(conn)
    .await?
    .rows_affected();
    if written != payments.len() as u64 {
        return Err(sqlx::Error::Protocol(format!(
            "{written} idempotency records written for {} payments: an unexpired key was overwritten?",
            payments.len()
        )));
    }
    Ok(())
}

/// Deletes up to `batch` idempotency keys older than `retention_secs`;
/// returns how many. Rows another purge holds are skipped, not waited for.
pub async fn purge_expired_keys(
    pool: &sqlx::PgPool,
    retention_secs: u64,
    batch: i64,
) -> sqlx::Result<u64> {
    let deleted = sqlx::query(
        "WITH expired AS (
             SELECT client_id, idempotency_key FROM idempotency_keys
             WHERE created_at <= now() - $1::bigint * interval '1 second'
             ORDER BY created_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         DELETE FROM idempotency_keys i USING expired e
         WHERE i.client_id = e.client_id AND i.idempotency_key = e.idempotency_key",
    )
    .bind(retention_secs as i64)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(deleted)
}
