//! AccountBalanceConsumer.
//!
//! - consumes `ledger_entries_recorded_topic` (key sellerId); produces nothing
//! - applies each journal to `account_balances` exactly once (per-journal
//!   idempotency through `applied_journals`, not a watermark), summing deltas
//!   per batch and updating accounts in sorted order (platform accounts are
//!   hot rows), then refreshes the Redis cache with a version check
//! - DLQ: undecodable events

use async_trait::async_trait;

use super::consume::Inbound;
use super::decision::{decode, Decision, Failure};
use super::stage_loop::Stage;
use super::PipelineContext;
use crate::balance_cache::BalanceCache;
use crate::domain::events::{Envelope, LedgerEntriesRecorded};
use crate::kafka::topic;
use crate::store::ledger;

pub struct AccountBalanceConsumer {
    ctx: PipelineContext,
    cache: BalanceCache,
}

impl AccountBalanceConsumer {
    pub fn new(ctx: PipelineContext) -> Self {
        let cache = BalanceCache::new(
            ctx.redis.clone(),
            &ctx.names,
            ctx.pool.clone(),
            &ctx.config.redis,
        );
        AccountBalanceConsumer { ctx, cache }
    }
}

fn journals_of(record: &Inbound) -> Result<Vec<String>, Failure> {
    let envelope = decode(record)?;
    let recorded: LedgerEntriesRecorded = envelope.payload().map_err(|e| Failure::Poison {
        class: "undecodable",
        message: format!("bad LedgerEntriesRecorded: {e}"),
    })?;
    Ok(recorded
        .journals
        .into_iter()
        .map(|j| j.journal_id)
        .collect())
}

#[async_trait]
impl Stage for AccountBalanceConsumer {
    fn name(&self) -> &'static str {
        "account_balance_consumer"
    }

    fn input_topic(&self) -> &'static str {
        topic::LEDGER_ENTRIES_RECORDED
    }

    async fn handle(&self, _envelope: &Envelope) -> Decision {
        unreachable!("handle_batch is overridden")
    }

    /// One DB transaction for the whole batch. If the batch fails for a
    /// reason that will repeat (say a balance would leave the bigint range),
    /// each record is applied on its own: the poisoned one goes to the DLQ
    /// and every other seller's balance still moves.
    async fn handle_batch(&self, batch: &[Inbound], _concurrency: usize) -> Vec<Decision> {
        let parsed: Vec<Result<Vec<String>, Failure>> = batch.iter().map(journals_of).collect();
        let all: Vec<String> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flatten()
            .cloned()
            .collect();
        match self.apply(all).await {
            Ok(()) => parsed.into_iter().map(|p| p.map(|_| Vec::new())).collect(),
            Err(Failure::Poison { class, message }) => {
                tracing::warn!(class, %message, "balance batch failed for good; applying record by record");
                let mut decisions = Vec::with_capacity(parsed.len());
                for journals in parsed {
                    decisions.push(match journals {
                        Ok(journals) => self.apply(journals).await.map(|()| Vec::new()),
                        Err(failure) => Err(failure),
                    });
                }
                decisions
            }
            Err(Failure::Retryable(error)) => Failure::retry_all(batch.len(), &error),
        }
    }
}

impl AccountBalanceConsumer {
    async fn apply(&self, mut journal_ids: Vec<String>) -> Result<(), Failure> {
        journal_ids.sort();
        journal_ids.dedup();
        let rows = ledger::apply_to_balances(&self.ctx.pool, &journal_ids)
            .await
            .map_err(|error| match error.downcast::<sqlx::Error>() {
                Ok(db) => Failure::from(db),
                // The only other failure is a delta past the i64 range: it
                // repeats on every retry, so it is the records' problem.
                Err(other) => Failure::Poison {
                    class: "balance_overflow",
                    message: format!("{other:#}"),
                },
            })?;
        if let Err(error) = self.cache.store(&rows).await {
            // The cache is not the truth; readers fall back to Postgres.
            tracing::warn!(error = %format!("{error:#}"), "balance cache refresh failed");
        }
        Ok(())
    }
}
