//! A writer task: take a group off the queue, write it in one transaction,
//! answer every request of it. Several writers share one queue, so one
//! group's statements run while another group's commit is being made durable.

use std::collections::HashSet;
use std::time::Instant;

use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::{Claim, Outcome, Settings};
use crate::kafka::topic;
use crate::store::intake::{self as store, NewPayment, StoredResponse};

/// A request waiting for its group. Its claim on the key is released just
/// before it is answered, so the client's next request never sees it.
pub(super) struct Queued {
    pub payment: NewPayment,
    pub reply: oneshot::Sender<Outcome>,
    pub claim: Claim,
}

/// A request's fate inside the transaction, before the commit.
pub(super) enum Verdict {
    Accepted,
    Replayed(StoredResponse),
    KeyReused,
    KeyInFlight,
    OrderTaken,
}

/// Why a whole group was not written.
enum Failure {
    Database(sqlx::Error),
    TimedOut,
}

pub(super) async fn run(queue: &Mutex<mpsc::Receiver<Queued>>, pool: &PgPool, settings: &Settings) {
    while let Some(mut group) = collect(queue, settings).await {
        // Their HTTP deadline fired while queued: already answered 503.
        group.retain(|queued| !queued.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        match transact(pool, settings, &group).await {
            Ok(verdicts) => answer(group, verdicts),
            Err(Failure::Database(error)) if group.len() > 1 => {
                tracing::warn!(%error, requests = group.len(), "intake group failed; retrying its requests one by one");
                for queued in group {
                    alone(pool, settings, queued).await;
                }
            }
            Err(failure) => refuse(group, failure),
        }
    }
}

/// Waits for one request, then takes what else is queued right now, up to
/// the count and time bounds. It never waits for requests not yet sent, so
/// a lone request is written at once; under load, requests queue up while
/// the previous group commits, and the next group takes them all.
async fn collect(
    queue: &Mutex<mpsc::Receiver<Queued>>,
    settings: &Settings,
) -> Option<Vec<Queued>> {
    let mut queue = queue.lock().await;
    let first = queue.recv().await?;
    let opened = Instant::now();
    let mut group = vec![first];
    let mut yielded = false;
    while group.len() < settings.max_requests && opened.elapsed() < settings.max_wait {
        match queue.try_recv() {
            Ok(queued) => group.push(queued),
            // One pass of the scheduler lets handlers that are about to send
            // (woken by the same poll) join this group instead of the next.
            Err(TryRecvError::Empty) if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Err(_) => break,
        }
    }
    Some(group)
}

async fn alone(pool: &PgPool, settings: &Settings, queued: Queued) {
    let group = vec![queued];
    match transact(pool, settings, &group).await {
        Ok(verdicts) => answer(group, verdicts),
        Err(failure) => refuse(group, failure),
    }
}

/// One transaction for the group, ended on every path: committed, or rolled
/// back (its advisory locks released) on an error or past the timeout.
async fn transact(
    pool: &PgPool,
    settings: &Settings,
    group: &[Queued],
) -> Result<Vec<Verdict>, Failure> {
    let begin = store::begin_bounded(settings.timeout.as_millis() as u64);
    let began = tokio::time::timeout(settings.timeout, pool.begin_with(begin)).await;
    let mut tx = began
        .map_err(|_| Failure::TimedOut)?
        .map_err(Failure::Database)?;
    match tokio::time::timeout(settings.timeout, write(&mut tx, settings, group)).await {
        Ok(Ok(verdicts)) => {
            tx.commit().await.map_err(Failure::Database)?;
            Ok(verdicts)
        }
        Ok(Err(error)) => {
            let _ = tx.rollback().await;
            Err(failure(error))
        }
        Err(_) => {
            // A statement cut off here ends on the server by statement_timeout;
            // the rollback waits for it, then releases every lock.
            if let Err(error) = tx.rollback().await {
                tracing::warn!(%error, "rolling back a timed-out intake group failed");
            }
            Err(Failure::TimedOut)
        }
    }
}

/// The server's `statement_timeout` firing is the group's timeout too: such
/// a group is not retried request by request.
fn failure(error: sqlx::Error) -> Failure {
    const QUERY_CANCELED: &str = "57014";
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED) => {
            Failure::TimedOut
        }
        _ => Failure::Database(error),
    }
}

/// The group's statements: locks, stored responses, then the new rows of the
/// requests still standing.
async fn write(
    conn: &mut PgConnection,
    settings: &Settings,
    group: &[Queued],
) -> sqlx::Result<Vec<Verdict>> {
    let lock_ids: Vec<i64> = group
        .iter()
        .map(|q| lock_id(&q.payment.client_id, &q.payment.idempotency_key))
        .collect();
    let locked = store::try_lock_keys(conn, &lock_ids).await?;
    let keys: Vec<(&str, &str)> = group
        .iter()
        .map(|q| {
            (
                q.payment.client_id.as_str(),
                q.payment.idempotency_key.as_str(),
            )
        })
        .collect();
    let mut stored = store::stored_responses(conn, &keys, settings.retention_secs).await?;
    let triaged: Vec<Option<Verdict>> = group
        .iter()
        .enumerate()
        .map(|(i, q)| triage(&q.payment.request_sha256, locked[i], stored.remove(&i)))
        .collect();
    if !settings.hold.is_zero() {
        tokio::time::sleep(settings.hold).await;
    }
    let fresh: Vec<&NewPayment> = group
        .iter()
        .zip(&triaged)
        .filter(|(_, verdict)| verdict.is_none())
        .map(|(q, _)| &q.payment)
        .collect();
    let inserted = insert(conn, &fresh, settings.retention_secs).await?;
    Ok(group
        .iter()
        .zip(triaged)
        .map(|(q, verdict)| {
            verdict.unwrap_or(if inserted.contains(&q.payment.payment_id) {
                Verdict::Accepted
            } else {
                Verdict::OrderTaken
            })
        })
        .collect())
}

/// Payments first (who wins each orderId), then the winners' orders, outbox
/// rows and idempotency records. Returns the winners' payment ids.
async fn insert(
    conn: &mut PgConnection,
    fresh: &[&NewPayment],
    retention_secs: u64,
) -> sqlx::Result<HashSet<Uuid>> {
    if fresh.is_empty() {
        return Ok(HashSet::new());
    }
    let inserted = store::insert_payments(conn, fresh).await?;
    let winners: Vec<&NewPayment> = fresh
        .iter()
        .copied()
        .filter(|p| inserted.contains(&p.payment_id))
        .collect();
    if !winners.is_empty() {
        store::insert_orders_and_events(conn, &winners, topic::PAYMENT_ORDER_CREATED).await?;
        store::insert_responses(conn, &winners, retention_secs).await?;
    }
    Ok(inserted)
}

/// A request's verdict from its lock and stored response alone; `None`
/// means it is to be written.
pub(super) fn triage(
    request_sha256: &str,
    locked: bool,
    stored: Option<StoredResponse>,
) -> Option<Verdict> {
    match (locked, stored) {
        (false, _) => Some(Verdict::KeyInFlight),
        (true, Some(stored)) if stored.request_sha256 == request_sha256 => {
            Some(Verdict::Replayed(stored))
        }
        (true, Some(_)) => Some(Verdict::KeyReused),
        (true, None) => None,
    }
}

/// The advisory lock id of an Idempotency-Key, scoped per client.
pub(super) fn lock_id(client_id: &str, key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{client_id}\u{0}{key}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn answer(group: Vec<Queued>, verdicts: Vec<Verdict>) {
    assert_eq!(group.len(), verdicts.len(), "one verdict per request");
    for (queued, verdict) in group.into_iter().zip(verdicts) {
        let Queued {
            payment,
            reply,
            claim,
        } = queued;
        let outcome = match verdict {
            Verdict::Accepted => {
                crate::metrics::payment_accepted();
                tracing::info!(traceId = %payment.trace_id, payment_id = %payment.payment_id,
                    orders = payment.orders.len(), "payment accepted");
                Outcome::Accepted {
                    response_json: payment.response_json,
                }
            }
            Verdict::Replayed(stored) => Outcome::Replayed {
                status: u16::try_from(stored.status).unwrap_or(202),
                body: stored.body,
            },
            Verdict::KeyReused => Outcome::KeyReused,
            Verdict::KeyInFlight => Outcome::KeyInFlight,
            Verdict::OrderTaken => Outcome::OrderTaken,
        };
        drop(claim);
        let _ = reply.send(outcome);
    }
}

fn refuse(group: Vec<Queued>, failure: Failure) {
    let reason = match failure {
        Failure::Database(error) => {
            tracing::error!(%error, requests = group.len(), "intake group not written");
            "database error"
        }
        Failure::TimedOut => {
            tracing::warn!(
                requests = group.len(),
                "intake group timed out and was rolled back"
            );
            "intake group timed out"
        }
    };
    for Queued { reply, claim, .. } in group {
        drop(claim);
        let _ = reply.send(Outcome::Unavailable { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(sha: &str) -> Option<StoredResponse> {
        Some(StoredResponse {
            request_sha256: sha.into(),
            status: 202,
            body: serde_json::json!({}),
        })
    }

    #[test]
    fn triage_follows_lock_then_stored_response() {
        assert!(matches!(
            triage("a", false, stored("a")),
            Some(Verdict::KeyInFlight)
        ));
        assert!(matches!(
            triage("a", false, None),
            Some(Verdict::KeyInFlight)
        ));
        assert!(matches!(
            triage("a", true, stored("a")),
            Some(Verdict::Replayed(_))
        ));
        assert!(matches!(
            triage("a", true, stored("b")),
            Some(Verdict::KeyReused)
        ));
        assert!(triage("a", true, None).is_none());
    }

    #[test]
    fn lock_ids_are_scoped_per_client() {
        assert_eq!(lock_id("c", "k"), lock_id("c", "k"));
        assert_ne!(lock_id("c", "k"), lock_id("d", "k"));
        assert_ne!(lock_id("c", "k1"), lock_id("c", "k"));
    }
}
