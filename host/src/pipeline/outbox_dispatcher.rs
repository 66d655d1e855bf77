//! OutboxDispatcher.
//!
//! - reads `outbox_event` rows (claimed `FOR UPDATE SKIP LOCKED`, batched, oldest first)
//! - produces each to its topic (`payment_order_created_topic` for intake) in
//!   one Kafka transaction per batch, keyed as the row says (paymentOrderId)
//! - marks rows SENT after the Kafka commit, in the claiming DB transaction;
//!   a crash in between re-sends them, and downstream dedupes by eventId
//! - also keeps the 30-minute partitions ahead and drops drained ones (worker 0)

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::outbound::{send, Outbound};
use super::PipelineContext;
use crate::domain::events::Envelope;
use crate::kafka;
use crate::kafka::transaction::{self, TxnError};
use crate::store::outbox;

/// How often worker 0 maintains partitions.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(
    ctx: PipelineContext,
    worker: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let txid =
        ctx.names
            .transactional_id("outbox_dispatcher", &ctx.config.stages.instance_id, worker);
    let mut producer = kafka::producer_for_this_life(&ctx.config.kafka, &ctx.pool, &txid).await?;
    let poll = Duration::from_millis(ctx.config.outbox.poll_interval_ms);
    let worker_label = worker.to_string();
    let mut last_maintenance: Option<Instant> = None;
    tracing::info!(worker, "outbox dispatcher started");
    while !shutdown.is_cancelled() {
        if worker == 0 && last_maintenance.is_none_or(|t| t.elapsed() > MAINTENANCE_INTERVAL) {
            last_maintenance = Some(Instant::now());
            maintain(&ctx).await;
        }
        match dispatch_batch(&ctx, &producer, &worker_label).await {
            Ok(0) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Ok(sent) => crate::metrics::outbox_dispatched(&worker_label, sent),
            Err(DispatchError::Fatal(error)) => {
                // The rows were rolled back and stay unsent; a new producer
                // publishes them (again, if the broker kept the old
                // transaction: downstream dedupes by event id).
                crate::metrics::outbox_dispatch_failed(&worker_label);
                tracing::error!(error = %format!("{error:#}"), "outbox producer unusable; re-initialising it");
                match transaction::reinit(&ctx.config.kafka, &ctx.pool, &txid, &shutdown).await {
                    Some(fresh) => producer = fresh,
                    None => break,
                }
            }
            Err(DispatchError::Retry(error)) => {
                crate::metrics::outbox_dispatch_failed(&worker_label);
                tracing::warn!(error = %format!("{error:#}"), "outbox batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}

async fn maintain(ctx: &PipelineContext) {
    let outbox = &ctx.config.outbox;
    match outbox::maintain_partitions(
        &ctx.pool,
        outbox.partitions_ahead_minutes,
        outbox.keep_drained_minutes,
    )
    .await
    {
        Ok((created, dropped)) if created + dropped > 0 => {
            tracing::info!(created, dropped, "outbox partitions maintained")
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "outbox partition maintenance failed"),
    }
}

enum DispatchError {
    Fatal(anyhow::Error),
    Retry(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for DispatchError {
    fn from(error: E) -> Self {
        DispatchError::Retry(error.into())
    }
}

/// Publishes one batch; returns how many rows were sent.
async fn dispatch_batch(
    ctx: &PipelineContext,
    producer: &rdkafka::producer::FutureProducer,
    worker: &str,
) -> Result<usize, DispatchError> {
    let mut tx = ctx.pool.begin().await?;
    let published = publish_claimed(ctx, producer, worker, &mut tx).await;
    // End the transaction on every path: a dropped sqlx transaction rolls
    // back only when its connection is next used, and until then its row
    // locks hide the claimed rows from every other dispatcher.
    match published {
        Ok(sent) => {
            tx.commit().await?;
            Ok(sent)
        }
        Err(error) => {
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// Claims a batch in `tx`, publishes it in one Kafka transaction and marks
/// it SENT (the caller commits after the Kafka commit).
async fn publish_claimed(
    ctx: &PipelineContext,
    producer: &rdkafka::producer::FutureProducer,
    worker: &str,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<usize, DispatchError> {
    let rows = outbox::claim(tx, ctx.config.outbox.batch_size).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Decode everything before the Kafka transaction starts; a row that can
    // never be published is quarantined rather than retried forever.
    let (good, bad): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .map(|row| (outbound(&row), row))
        .partition(|(o, _)| o.is_ok());
    if !bad.is_empty() {
        for (reason, row) in &bad {
            tracing::error!(event_id = %row.event_id, topic = %row.topic, reason = %format!("{:#}", reason.as_ref().expect_err("bad rows hold errors")), "outbox row quarantined");
            crate::metrics::outbox_dispatch_failed(worker);
        }
        let quarantined: Vec<_> = bad.into_iter().map(|(_, row)| row).collect();
        outbox::mark(tx, &quarantined, "QUARANTINED").await?;
    }
    let (outputs, rows): (Vec<Outbound>, Vec<_>) = good
        .into_iter()
        .map(|(o, row)| (o.expect("good rows decode"), row))
        .unzip();
    if outputs.is_empty() {
        return Ok(0);
    }
    let queue = || {
        outputs
            .iter()
            .try_for_each(|out| send(producer, &ctx.names, out))
    };
    match transaction::produce(producer, queue, None) {
        Ok(()) => {}
        Err(TxnError::Fatal(error)) => return Err(DispatchError::Fatal(error)),
        Err(TxnError::Aborted(reason)) => {
            return Err(DispatchError::Retry(anyhow::anyhow!(reason)))
        }
    }
    outbox::mark(tx, &rows, "SENT").await?;
    Ok(rows.len())
}

fn outbound(row: &outbox::OutboxRow) -> anyhow::Result<Outbound> {
    let envelope: Envelope = serde_json::from_value(row.envelope.clone())?;
    let topic = kafka::topic::ALL
        .into_iter()
        .find(|t| *t == row.topic)
        .ok_or_else(|| anyhow::anyhow!("outbox row for unknown topic {}", row.topic))?;
    Ok(Outbound::new(topic, row.message_key.clone(), envelope))
}
