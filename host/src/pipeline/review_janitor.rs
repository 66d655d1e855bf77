//! The review janitor (Kill Bill's model): an order whose PSP outcome stayed
//! unknown is not left to a human at once. On a growing schedule
//! (`psp.review_schedule_secs`, e.g. 1 min, 5 min, 30 min, 2 h, 24 h) it asks
//! the order's pinned adapter `status` again; a definite answer settles the
//! order (finalized event through the outbox), otherwise the next check is
//! scheduled, and when the schedule is spent an admin decides. Each sweep
//! also re-checks the refunds left unknown ([`super::refund_review_janitor`]);
//! `review_janitor_checks_total{subject=order|refund,result}` counts both.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::payment_order_psp_call_executor::charge_request;
use super::{refund_review_janitor, PipelineContext};
use crate::components::bindings::adapter::paynode::psp_adapter::types as wit;
use crate::components::Slot;
use crate::config::PspConfig;
use crate::domain::events::FinalStatus;
use crate::store::payments::OrderRow;
use crate::store::{orders, reviews};

/// When the first re-check of a new review is due (None: no janitor).
pub fn first_check(psp: &PspConfig) -> Option<DateTime<Utc>> {
    psp.review_schedule_secs
        .first()
        .map(|secs| Utc::now() + chrono::Duration::seconds(*secs as i64))
}

pub async fn run(ctx: PipelineContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    let every = Duration::from_millis(ctx.config.psp.review_poll_ms);
    while !shutdown.is_cancelled() {
        if let Err(error) = sweep(&ctx).await {
            tracing::warn!(error = %format!("{error:#}"), "review janitor sweep failed");
        }
        // Refunds left unknown, on the same schedule.
        if let Err(error) = refund_review_janitor::sweep(&ctx).await {
            tracing::warn!(error = %format!("{error:#}"), "refund review janitor sweep failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    Ok(())
}

async fn sweep(ctx: &PipelineContext) -> anyhow::Result<()> {
    for order in orders::due_reviews(&ctx.pool, 50).await? {
        let result = check(ctx, &order).await?;
        metrics::counter!("review_janitor_checks_total", "subject" => "order", "result" => result)
            .increment(1);
    }
    Ok(())
}

/// One re-check of one order; returns the metric label of what happened.
async fn check(ctx: &PipelineContext, order: &OrderRow) -> anyhow::Result<&'static str> {
    let answer = match order.adapter_activation_id {
        Some(id) => ask_status(ctx, order, id).await,
        None => wit::Outcome::Unknown("order has no pinned adapter".into()),
    };
    let (status, reference, label) = match answer {
        wit::Outcome::Succeeded(reference) => {
            (FinalStatus::Succeeded, Some(reference), "succeeded")
        }
        wit::Outcome::Declined(_) => (FinalStatus::Failed, None, "declined"),
        wit::Outcome::Transient(_) | wit::Outcome::Unknown(_) => {
            let checks = order.review_checks + 1;
            let next = ctx
                .config
                .psp
                .review_schedule_secs
                .get(checks as usize)
                .map(|secs| Utc::now() + chrono::Duration::seconds(*secs as i64));
            orders::next_review(&ctx.pool, order.payment_order_id, checks, next).await?;
            return Ok(if next.is_some() {
                "still_unknown"
            } else {
                "left_to_admin"
            });
        }
    };
    let settlement = reviews::Settlement {
        status,
        psp_reference: reference.as_deref(),
        reason: format!("settled by the review janitor's status check ({label})"),
        actor: "review-janitor",
        action: "review-settled",
        details: serde_json::json!({ "answer": label, "pspReference": reference }),
    };
    reviews::settle(&ctx.pool, order, &settlement).await?;
    Ok(label)
}

async fn ask_status(ctx: &PipelineContext, order: &OrderRow, activation_id: i64) -> wit::Outcome {
    let adapter = match ctx
        .registry
        .activation(Slot::PspAdapter, activation_id)
        .await
    {
        Ok(adapter) => adapter,
        Err(error) => return wit::Outcome::Unknown(error.to_string()),
    };
    let attempt = order.last_applied_attempt.max(1) as u32;
    let request = charge_request(order, attempt);
    let env = ctx.registry.adapter_env(&adapter, "review-janitor");
    match ctx
        .registry
        .runtime()
        .status(&adapter.loaded, &env, &adapter.config, &request)
        .await
    {
        Ok((answer, _)) => answer,
        Err(error) => wit::Outcome::Unknown(error.to_string()),
    }
}
