//! The review janitor for refunds (issue 8 item 9, applied to refunds): a
//! refund whose PSP outcome stayed unknown (REQUIRES_REVIEW) is not left to
//! a notification or a human at once. On the orders' growing schedule
//! (`psp.review_schedule_secs`) it asks `refund-status` again, of the
//! adapter activation the refund's order is pinned to and under that
//! activation's egress policy; a definite answer settles the refund (its
//! `RefundFinalized` event through the outbox, so the ledger follows),
//! otherwise the next check is scheduled. When the schedule is spent a PSP
//! notification or a human settles it. Run by [`super::review_janitor`].

use chrono::Utc;

use super::refund_executor::refund_request;
use super::PipelineContext;
use crate::components::bindings::adapter::paynode::psp_adapter::types as wit;
use crate::components::Slot;
use crate::domain::refund::RefundStatus;
use crate::store::orders;
use crate::store::payments::OrderRow;
use crate::store::refunds::{self, RefundRow};

/// Re-checks every refund whose review check is due (50 a round).
pub async fn sweep(ctx: &PipelineContext) -> anyhow::Result<()> {
    for refund in refunds::due_reviews(&ctx.pool, 50).await? {
        let result = check(ctx, &refund).await?;
        metrics::counter!("review_janitor_checks_total", "subject" => "refund", "result" => result)
            .increment(1);
    }
    Ok(())
}

/// One re-check of one refund; returns the metric label of what happened.
/// `superseded`: a notification or another node's janitor changed the
/// refund first (the guarded update applied nothing).
async fn check(ctx: &PipelineContext, refund: &RefundRow) -> anyhow::Result<&'static str> {
    let Some(order) = orders::get(&ctx.pool, refund.payment_order_id).await? else {
        tracing::error!(refund_id = %refund.refund_id, "refund in review without its order");
        return schedule_next(ctx, refund).await;
    };
    let (to, reference, reason, label) = match ask_refund_status(ctx, refund, &order).await {
        wit::Outcome::Succeeded(reference) => {
            (RefundStatus::Succeeded, Some(reference), None, "succeeded")
        }
        wit::Outcome::Declined(failure) => (
            RefundStatus::Failed,
            None,
            Some(format!(
                "declined ({}), settled by the review janitor's refund-status check",
                failure.code
            )),
            "declined",
        ),
        wit::Outcome::Transient(_) | wit::Outcome::Unknown(_) => {
            return schedule_next(ctx, refund).await
        }
    };
    let applied = refunds::settle_review(
        &ctx.pool,
        refund,
        order.order_ref(),
        to,
        reference.as_deref(),
        reason.as_deref(),
    )
    .await?;
    if !applied {
        return Ok("superseded");
    }
    crate::metrics::refund(if to == RefundStatus::Succeeded {
        "succeeded"
    } else {
        "failed"
    });
    tracing::info!(refund_id = %refund.refund_id, status = to.as_str(), checks = refund.review_checks + 1,
        "refund review settled by the review janitor");
    Ok(label)
}

/// Still unknown: count the check and set the next one, if the schedule
/// has one.
async fn schedule_next(ctx: &PipelineContext, refund: &RefundRow) -> anyhow::Result<&'static str> {
    let checks = refund.review_checks + 1;
    let next = ctx
        .config
        .psp
        .review_schedule_secs
        .get(checks as usize)
        .map(|secs| Utc::now() + chrono::Duration::seconds(*secs as i64));
    let applied = refunds::next_review(&ctx.pool, refund.refund_id, checks, next).await?;
    Ok(match (applied, next) {
        (false, _) => "superseded",
        (true, Some(_)) => "still_unknown",
        (true, None) => "left_to_admin",
    })
}

/// `refund-status` of the refund's last attempt, from its order's pinned
/// activation; a failure to ask is an unknown answer.
async fn ask_refund_status(
    ctx: &PipelineContext,
    refund: &RefundRow,
    order: &OrderRow,
) -> wit::Outcome {
    let Some(activation_id) = order.adapter_activation_id else {
        return wit::Outcome::Unknown("order has no pinned adapter".into());
    };
    let adapter = match ctx
        .registry
        .activation(Slot::PspAdapter, activation_id)
        .await
    {
        Ok(adapter) => adapter,
        Err(error) => return wit::Outcome::Unknown(error.to_string()),
    };
    let attempt = refund.last_applied_attempt.max(1) as u32;
    let request = refund_request(refund, order, attempt);
    let env = ctx.registry.adapter_env(&adapter, &refund.trace_id);
    match ctx
        .registry
        .runtime()
        .refund(&adapter.loaded, &env, &adapter.config, &request, true)
        .await
    {
        Ok((answer, _)) => answer,
        Err(error) => wit::Outcome::Unknown(error.to_string()),
    }
}
