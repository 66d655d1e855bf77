//! The retry sweeper: Redis keeps nothing on disk, Postgres says what
//! should be waiting there. Run by the retry scheduler's first worker every
//! few seconds:
//! - an order's or a refund's retry overdue by `retry.sweep_grace_ms` and
//!   missing from Redis is re-added (same deterministic event id, so one
//!   Redis still holds is never doubled; the executors' attempt claims
//!   absorb a duplicate that slips through);
//! - an order stranded before its first PSP call gets its created event
//!   again.

use chrono::Utc;

use super::PipelineContext;
use crate::domain::events::{event_type, Envelope, PspCallRequested};
use crate::domain::money::Money;
use crate::domain::refund::RefundRequested;
use crate::kafka::topic;
use crate::store::{orders, refunds};

/// One round; a failing part is logged and tried again next round.
pub async fn sweep(ctx: &PipelineContext) {
    if let Err(error) = sweep_orders(ctx).await {
        tracing::warn!(error = %format!("{error:#}"), "retry sweep failed");
    }
    if let Err(error) = sweep_refunds(ctx).await {
        tracing::warn!(error = %format!("{error:#}"), "refund retry sweep failed");
    }
    if let Err(error) = resend_stranded(ctx).await {
        tracing::warn!(error = %format!("{error:#}"), "stranded-order sweep failed");
    }
}

/// An order still INITIATED this long after its last change, with its
/// created event already sent, never reached the PSP stage (the broker lost
/// or skipped the event).
const STRANDED_AFTER_SECS: f64 = 30.0;

/// Re-publishes the created event (same deterministic id) of stranded
/// orders through the outbox; the executor's attempt claim makes a
/// duplicate harmless.
async fn resend_stranded(ctx: &PipelineContext) -> anyhow::Result<()> {
    let stranded = orders::stranded_initiated(&ctx.pool, STRANDED_AFTER_SECS, 500).await?;
    if stranded.is_empty() {
        return Ok(());
    }
    let mut tx = ctx.pool.begin().await?;
    let mut events = Vec::with_capacity(stranded.len());
    for (order, trace_id) in &stranded {
        let key = order.payment_order_id.to_string();
        tracing::warn!(order_id = %key, "order stranded before its first PSP call; re-publishing its created event");
        events.push((
            key.clone(),
            Envelope::new(
                event_type::PAYMENT_ORDER_CREATED,
                &key,
                0,
                trace_id,
                None,
                order,
            ),
        ));
    }
    crate::store::outbox::append(&mut tx, topic::PAYMENT_ORDER_CREATED, &events).await?;
    let ids: Vec<uuid::Uuid> = stranded.iter().map(|(o, _)| o.payment_order_id).collect();
    orders::touch(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(())
}

/// Re-adds overdue order retries that Redis no longer holds.
async fn sweep_orders(ctx: &PipelineContext) -> anyhow::Result<()> {
    let grace = chrono::Duration::milliseconds(ctx.config.retry.sweep_grace_ms as i64);
    for (order_id, attempt, due) in orders::due_retries(&ctx.pool, Utc::now() - grace, 1000).await?
    {
        let Some(order) = orders::get(&ctx.pool, order_id).await? else {
            continue;
        };
        let request = PspCallRequested {
            order: order.order_ref(),
            attempt: attempt as u32,
        };
        let key = order_id.to_string();
        let trace_id: String =
            sqlx::query_scalar("SELECT trace_id FROM payments WHERE payment_id = $1")
                .bind(order.payment_id)
                .fetch_one(&ctx.pool)
                .await?;
        let event = Envelope::new(
            event_type::PSP_CALL_REQUESTED,
            &key,
            attempt as u32,
            &trace_id,
            None,
            &request,
        );
        if !ctx.retry_queue.contains(&event).await? {
            tracing::warn!(%order_id, attempt, "retry missing from Redis; re-adding");
            ctx.retry_queue
                .schedule(&event, due.timestamp_millis())
                .await?;
        }
    }
    Ok(())
}

/// Re-adds overdue refund retries that Redis no longer holds: the event the
/// refund executor would have scheduled (`RefundRequested`, next attempt).
async fn sweep_refunds(ctx: &PipelineContext) -> anyhow::Result<()> {
    let grace = chrono::Duration::milliseconds(ctx.config.retry.sweep_grace_ms as i64);
    for refund in refunds::due_retries(&ctx.pool, Utc::now() - grace, 1000).await? {
        let Some(order) = orders::get(&ctx.pool, refund.payment_order_id).await? else {
            continue;
        };
        let request = RefundRequested {
            refund_id: refund.refund_id,
            order: order.order_ref(),
            refund_amount: Money::new(refund.amount_minor, &refund.currency),
            attempt: refund.last_applied_attempt as u32 + 1,
        };
        let event = Envelope::new(
            event_type::REFUND_REQUESTED,
            &refund.refund_id.to_string(),
            request.attempt,
            &refund.trace_id,
            None,
            &request,
        );
        if !ctx.retry_queue.contains(&event).await? {
            let (refund_id, attempt) = (refund.refund_id, request.attempt);
            tracing::warn!(%refund_id, attempt, "refund retry missing from Redis; re-adding");
            ctx.retry_queue
                .schedule(&event, Utc::now().timestamp_millis())
                .await?;
        }
    }
    Ok(())
}
