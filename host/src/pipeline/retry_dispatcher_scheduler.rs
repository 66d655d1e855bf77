//! RetryDispatcherScheduler.
//!
//! - reads due retries from Redis (one Lua script claims them into a leased
//!   in-flight set), produces them to `payment_order_psp_call_requested_topic`
//!   (key paymentOrderId) in one Kafka transaction, and acknowledges them in
//!   Redis only after the commit; an expired lease returns an item to the queue
//! - a sweeper (`retry_sweeper`) re-adds retries that Postgres says are
//!   overdue but Redis lost
//! - idempotency: the event id is (order, attempt)-derived; the executor's
//!   attempt claim absorbs a duplicate delivery

use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use super::outbound::{send, Outbound};
use super::{retry_sweeper, PipelineContext};
use crate::domain::events::{event_type, Envelope};
use crate::kafka::transaction::{self, TxnError};
use crate::kafka::{self, topic};

const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(
    ctx: PipelineContext,
    worker: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let txid = ctx.names.transactional_id(
        "retry_dispatcher_scheduler",
        &ctx.config.stages.instance_id,
        worker,
    );
    let mut producer = kafka::producer_for_this_life(&ctx.config.kafka, &ctx.pool, &txid).await?;
    let poll = Duration::from_millis(ctx.config.retry.poll_interval_ms);
    let mut last_sweep = tokio::time::Instant::now();
    tracing::info!(worker, "retry scheduler started");
    while !shutdown.is_cancelled() {
        match dispatch_due(&ctx, &producer).await {
            Ok(count) => {
                crate::metrics::retry_batch(count);
                if count > 0 {
                    continue;
                }
            }
            Err(error) => {
                crate::metrics::retry_event("failed");
                if matches!(error.downcast_ref::<TxnError>(), Some(TxnError::Fatal(_))) {
                    // The claimed retries were released (or their lease
                    // runs out); a new producer dispatches them.
                    tracing::error!(error = %format!("{error:#}"), "retry producer unusable; re-initialising it");
                    match transaction::reinit(&ctx.config.kafka, &ctx.pool, &txid, &shutdown).await
                    {
                        Some(fresh) => producer = fresh,
                        None => break,
                    }
                    continue;
                }
                tracing::warn!(error = %format!("{error:#}"), "retry dispatch failed");
            }
        }
        if worker == 0 && last_sweep.elapsed() > SWEEP_INTERVAL {
            last_sweep = tokio::time::Instant::now();
            retry_sweeper::sweep(&ctx).await;
        }
        if let Ok(size) = ctx.retry_queue.size().await {
            crate::metrics::retry_queue_size(size);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    Ok(())
}

async fn dispatch_due(ctx: &PipelineContext, producer: &FutureProducer) -> anyhow::Result<usize> {
    let retry = &ctx.config.retry;
    let now_ms = Utc::now().timestamp_millis();
    let due = ctx
        .retry_queue
        .claim_due(now_ms, retry.batch_size, retry.lease_ms)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let queue = || {
        due.iter().try_for_each(|event| {
            let (topic, key) = route(event);
            send(
                producer,
                &ctx.names,
                &Outbound::new(topic, key, event.clone()),
            )
        })
    };
    let produced = transaction::produce(producer, queue, None).map_err(anyhow::Error::from);
    if let Err(error) = produced {
        ctx.retry_queue.release(&due, now_ms).await?;
        return Err(error);
    }
    ctx.retry_queue.ack(&due).await?;
    for _ in &due {
        crate::metrics::retry_event("processed");
    }
    Ok(due.len())
}

/// Where a due retry goes: a refund's next attempt to the refund executor
/// (keyed by its order, like every refund event), a charge's to the PSP
/// call executor.
fn route(event: &Envelope) -> (&'static str, String) {
    if event.event_type == event_type::REFUND_REQUESTED {
        let order = event
            .data
            .get("paymentOrderId")
            .and_then(|v| v.as_str())
            .unwrap_or(&event.aggregate_id)
            .to_string();
        return (topic::REFUND_REQUESTED, order);
    }
    (topic::PSP_CALL_REQUESTED, event.aggregate_id.clone())
}
