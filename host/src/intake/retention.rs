//! Idempotency-Key retention: a key replays its first response for
//! `intake.idempotency_retention_secs`, then it is forgotten (intake reads
//! only unexpired keys) and this task deletes it.
//!
//! Deletes run in batches of `intake.idempotency_purge_batch` rows, each its
//! own short statement (`LIMIT` inside a CTE, `FOR UPDATE SKIP LOCKED`), so
//! several intake nodes may purge at once without waiting on each other or
//! deleting a row twice, and no purge holds a long transaction. Only the
//! key → response mapping goes; payments, orders and ledger rows stay.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::IntakeConfig;
use crate::store::intake as store;

/// Batches one round may run before it sleeps again, so a huge backlog is
/// worked off over several rounds instead of one unbounded loop.
const MAX_BATCHES_PER_ROUND: usize = 100;

/// Purges expired keys every `idempotency_purge_interval_ms` until shutdown.
pub async fn run(
    pool: PgPool,
    config: IntakeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let interval = Duration::from_millis(config.idempotency_purge_interval_ms);
    loop {
        match purge_round(&pool, &config).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys purged"),
            Err(error) => {
                tracing::warn!(%error, "idempotency key purge failed; retrying next round")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Deletes expired keys batch by batch until a batch comes back short.
async fn purge_round(pool: &PgPool, config: &IntakeConfig) -> sqlx::Result<u64> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        let deleted = store::purge_expired_keys(
            pool,
            config.idempotency_retention_secs,
            config.idempotency_purge_batch,
        )
        .await?;
        total += deleted;
        if deleted < config.idempotency_purge_batch as u64 {
            break;
        }
    }
    Ok(total)
}
