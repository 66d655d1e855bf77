//! One Idempotency-Key checked inside a caller's transaction with intake's
//! own rules and statements (the transaction-scoped advisory lock, the
//! stored response, the retention window): for requests that are not
//! group-committed, such as refunds. Keys are scoped per client and shared
//! by every route: a key names one request, whatever it asked for.

use serde_json::Value;
use sqlx::PgConnection;

use super::writer::{lock_id, triage, Verdict};
use crate::store::intake as store;

/// What the key says about this request.
#[derive(Debug)]
pub enum KeyCheck {
    /// Never used (or expired): write the request.
    Fresh,
    /// Its first request is still in flight on some node.
    InFlight,
    /// Same request as the first: answer what was answered then.
    Replay { status: u16, body: Value },
    /// Used with another request.
    Reused,
}

/// Locks the key until the transaction ends, then triages it as intake
/// does.
pub async fn check(
    conn: &mut PgConnection,
    client_id: &str,
    key: &str,
    request_sha256: &str,
    retention_secs: u64,
) -> sqlx::Result<KeyCheck> {
    let locked = store::try_lock_keys(conn, &[lock_id(client_id, key)]).await?;
    let mut stored = store::stored_responses(conn, &[(client_id, key)], retention_secs).await?;
    Ok(match triage(request_sha256, locked[0], stored.remove(&0)) {
        None => KeyCheck::Fresh,
        Some(Verdict::KeyInFlight) => KeyCheck::InFlight,
        Some(Verdict::Replayed(stored)) => KeyCheck::Replay {
            status: u16::try_from(stored.status).unwrap_or(202),
            body: stored.body,
        },
        Some(Verdict::KeyReused) => KeyCheck::Reused,
        Some(Verdict::Accepted | Verdict::OrderTaken) => {
            unreachable!("triage decides before anything is written")
        }
    })
}
