//! outbox_event: rows written in the same transaction as the state they
//! announce, relayed to Kafka by the OutboxDispatcher.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::events::Envelope;

pub struct OutboxRow {
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub topic: String,
    pub message_key: String,
    pub envelope: Value,
}

/// Appends events for `topic` (a logical topic name, without prefix).
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    topic: &str,
    events: &[(String, Envelope)],
) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = events.iter().map(|(_, e)| e.event_id).collect();
    let keys: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let envelopes: Vec<Value> = events
        .iter()
        .map(|(_, e)| serde_json::to_value(e).expect("envelopes serialize"))
        .collect();
    sqlx::query(
        "INSERT INTO outbox_event (event_id, topic, message_key, envelope)
         SELECT id, $2, key, env FROM UNNEST($1::uuid[], $3::text[], $4::jsonb[]) AS t(id, key, env)",
    )
    .bind(&ids)
    .bind(topic)
    .bind(&keys)
    .bind(&envelopes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends events already serialized (JSON text, cast to `jsonb` by
/// Postgres): `event_ids[i]` with message key `keys[i]` and `envelopes[i]`.
pub async fn append_json(
    conn: &mut sqlx::PgConnection,
    topic: &str,
    event_ids: &[Uuid],
    keys: &[String],
    envelopes: &[&str],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox_event (event_id, topic, message_key, envelope)
         SELECT id, $2, key, env::jsonb FROM UNNEST($1::uuid[], $3::text[], $4::text[]) AS t(id, key, env)",
    )
    .bind(event_ids)
    .bind(topic)
    .bind(keys)
    .bind(envelopes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims up to `limit` unsent rows, oldest first. The row locks hold until
/// `tx` ends, so parallel dispatchers never publish the same row at once.
pub async fn claim(tx: &mut Transaction<'_, Postgres>, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    let rows: Vec<(Uuid, DateTime<Utc>, String, String, Value)> = sqlx::query_as(
        "SELECT event_id, created_at, topic, message_key, envelope FROM outbox_event
         WHERE status = 'NEW' ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(event_id, created_at, topic, message_key, envelope)| OutboxRow {
                event_id,
                created_at,
                topic,
                message_key,
                envelope,
            },
        )
        .collect())
}

/// Sets the status of claimed rows (SENT after the Kafka commit, or QUARANTINED).
pub async fn mark(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[OutboxRow],
    status: &str,
) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    sqlx::query(
        "UPDATE outbox_event o SET status = $3, sent_at = now()
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS t(id, created)
         WHERE o.event_id = t.id AND o.created_at = t.created",
    )
    .bind(&ids)
    .bind(&created)
    .bind(status)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn backlog(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox_event WHERE status = 'NEW'")
        .fetch_one(pool)
        .await
}

/// Unsent rows older than `age_secs` (reconciliation).
pub async fn stale_unsent(pool: &PgPool, age_secs: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox_event WHERE status = 'NEW' AND created_at < now() - make_interval(secs => $1)",
    )
    .bind(age_secs as f64)
    .fetch_one(pool)
    .await
}

/// Creates partitions ahead and drops drained old ones; returns (created, dropped).
pub async fn maintain_partitions(
    pool: &PgPool,
    ahead_minutes: u64,
    keep_minutes: u64,
) -> sqlx::Result<(i32, i32)> {
    let created: i32 =
        sqlx::query_scalar("SELECT paynode_outbox_create_partitions(make_interval(mins => $1))")
            .bind(ahead_minutes as i32)
            .fetch_one(pool)
            .await?;
    let dropped: i32 =
        sqlx::query_scalar("SELECT paynode_outbox_drop_drained(make_interval(mins => $1))")
            .bind(keep_minutes as i32)
            .fetch_one(pool)
            .await?;
    Ok((created, dropped))
}
