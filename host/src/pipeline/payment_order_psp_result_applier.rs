//! PaymentOrderPspResultApplier.
//!
//! - consumes `payment_order_psp_result_updated_topic` (key paymentOrderId)
//! - succeeded / declined → order SUCCEEDED / FAILED and `payment_order_finalized_topic`
//! - transient → asks the retry-policy component; retry → `next_retry_at` on
//!   the order **and** the Redis retry queue; give-up or the host's attempt cap
//!   → FAILED on the finalized topic (never a silent drop)
//! - unknown (that `status` did not settle) → REQUIRES_REVIEW
//! - idempotency: transitions are guarded by `last_applied_attempt`; a replayed
//!   result re-produces the same finalized event (deterministic id) and a
//!   result of a stale attempt is ignored
//! - DLQ: undecodable events, a failing retry-policy component (order PARKED)

use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use sha2::{Digest, Sha256};

use super::stage_loop::{Decision, Failure, Outbound, Stage};
use super::PipelineContext;
use crate::components::bindings::policy::paynode::retry_policy::types as wit;
use crate::components::Slot;
use crate::domain::events::{
    event_type, Envelope, FinalStatus, OrderFinalized, PspCallRequested, PspResultUpdated,
};
use crate::domain::payment::{OrderStatus, OutcomeKind};
use crate::kafka::topic;
use crate::store::orders;
use crate::store::payments::OrderRow;

pub struct PaymentOrderPspResultApplier {
    ctx: PipelineContext,
}

enum Next {
    Final(FinalStatus, Option<String>),
    RetryAfterMs(u64),
    Review(String),
}

impl PaymentOrderPspResultApplier {
    pub fn new(ctx: PipelineContext) -> Self {
        PaymentOrderPspResultApplier { ctx }
    }

    async fn decide(
        &self,
        envelope: &Envelope,
        result: &PspResultUpdated,
        order: &OrderRow,
    ) -> Result<Next, Failure> {
        let outcome = &result.outcome;
        Ok(match outcome.kind {
            OutcomeKind::Succeeded => Next::Final(FinalStatus::Succeeded, None),
            OutcomeKind::Declined => Next::Final(
                FinalStatus::Failed,
                Some(format!(
                    "declined: {}",
                    outcome.code.clone().unwrap_or_default()
                )),
            ),
            OutcomeKind::Unknown => Next::Review(
                outcome
                    .message
                    .clone()
                    .unwrap_or_else(|| "unknown PSP outcome".into()),
            ),
            OutcomeKind::Transient => match self.ask_policy(envelope, result, order).await? {
                // The policy decides first; the host's cap is the backstop.
                Next::RetryAfterMs(_) if result.attempt >= self.ctx.config.retry.max_attempts => {
                    Next::Final(
                        FinalStatus::Failed,
                        Some(format!(
                            "gave up after {} PSP calls (host cap)",
                            result.attempt
                        )),
                    )
                }
                next => next,
            },
        })
    }

    async fn ask_policy(
        &self,
        envelope: &Envelope,
        result: &PspResultUpdated,
        order: &OrderRow,
    ) -> Result<Next, Failure> {
        let active = self
            .ctx
            .registry
            .active(Slot::RetryPolicy)
            .map_err(Failure::from)?;
        let context = wit::RetryContext {
            payment_order_id: result.order.payment_order_id.to_string(),
            attempt: result.attempt,
            failure_code: result.outcome.code.clone().unwrap_or_default(),
            elapsed_ms: (Utc::now() - order.created_at).num_milliseconds().max(0) as u64,
            random: random_from(envelope),
        };
        let env = self.ctx.registry.env(Slot::RetryPolicy, &envelope.trace_id);
        let started = Instant::now();
        let decided = self
            .ctx
            .registry
            .runtime()
            .decide(&active.loaded, &env, &active.config, &context)
            .await;
        crate::metrics::component_call(Slot::RetryPolicy.as_str(), started, decided.as_ref().err());
        Ok(match decided.map_err(Failure::from)?.0 {
            wit::Decision::RetryAfter(ms) => {
                Next::RetryAfterMs(ms.min(self.ctx.config.retry.max_delay_ms))
            }
            wit::Decision::GiveUp(reason) => {
                Next::Final(FinalStatus::Failed, Some(truncate(&reason, 500)))
            }
        })
    }
}

/// The policy's randomness: derived from the event id, so a replay decides
/// exactly as the first run did.
fn random_from(envelope: &Envelope) -> u64 {
    let digest = Sha256::digest(envelope.event_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn finalized_event(
    envelope: &Envelope,
    result: &PspResultUpdated,
    status: FinalStatus,
    reason: Option<String>,
) -> Outbound {
    let key = result.order.payment_order_id.to_string();
    let finalized = OrderFinalized {
        order: result.order.clone(),
        status,
        psp_reference: result.outcome.psp_reference.clone(),
        final_attempt: result.attempt,
        reason,
    };
    let event = envelope.child(
        event_type::PAYMENT_ORDER_FINALIZED,
        &key,
        result.attempt,
        &finalized,
    );
    Outbound::new(topic::PAYMENT_ORDER_FINALIZED, key, event)
}

#[async_trait]
impl Stage for PaymentOrderPspResultApplier {
    fn name(&self) -> &'static str {
        "payment_order_psp_result_applier"
    }

    fn input_topic(&self) -> &'static str {
        topic::PSP_RESULT_UPDATED
    }

    async fn handle(&self, envelope: &Envelope) -> Decision {
        let result: PspResultUpdated = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad PaymentOrderPspResultUpdated: {e}"),
        })?;
        let order_id = result.order.payment_order_id;
        let order = orders::get(&self.ctx.pool, order_id)
            .await?
            .ok_or_else(|| Failure::Poison {
                class: "invalid_event",
                message: format!("unknown payment order {order_id}"),
            })?;
        let attempt = result.attempt as i32;
        let status = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::Pending);

        if attempt <= order.last_applied_attempt {
            // Already applied (replay) or stale. A replay of the final result
            // re-produces the same finalized event; a DB commit followed by a
            // Kafka abort must not lose it.
            if status.is_final() && order.final_attempt == Some(attempt) {
                let final_status = if status == OrderStatus::Succeeded {
                    FinalStatus::Succeeded
                } else {
                    FinalStatus::Failed
                };
                return Ok(vec![finalized_event(
                    envelope,
                    &result,
                    final_status,
                    order.failure_reason.clone(),
                )]);
            }
            if order.next_attempt == Some(attempt + 1) {
                if let Some(due) = order.next_retry_at {
                    self.enqueue_retry(envelope, &result, due).await?;
                }
            }
            return Ok(Vec::new());
        }
        if status.is_final() || status == OrderStatus::RequiresReview {
            tracing::info!(attempt, status = %order.status, "result for a settled order ignored");
            return Ok(Vec::new());
        }

        match self.decide(envelope, &result, &order).await? {
            Next::Final(final_status, reason) => {
                let db_status = match final_status {
                    FinalStatus::Succeeded => "SUCCEEDED",
                    FinalStatus::Failed => "FAILED",
                };
                orders::finalize(
                    &self.ctx.pool,
                    order_id,
                    attempt,
                    db_status,
                    result.outcome.psp_reference.as_deref(),
                    reason.as_deref(),
                )
                .await?;
                Ok(vec![finalized_event(
                    envelope,
                    &result,
                    final_status,
                    reason,
                )])
            }
            Next::RetryAfterMs(delay_ms) => {
                let due = Utc::now() + chrono::Duration::milliseconds(delay_ms as i64);
                if orders::schedule_retry(&self.ctx.pool, order_id, attempt, due).await? {
                    self.enqueue_retry(envelope, &result, due).await?;
                    crate::metrics::retry_event("scheduled");
                }
                Ok(Vec::new())
            }
            Next::Review(reason) => {
                orders::require_review(&self.ctx.pool, order_id, attempt, &reason).await?;
                crate::metrics::requires_review();
                Ok(Vec::new())
            }
        }
    }
}

impl PaymentOrderPspResultApplier {
    async fn enqueue_retry(
        &self,
        envelope: &Envelope,
        result: &PspResultUpdated,
        due: chrono::DateTime<Utc>,
    ) -> Result<(), Failure> {
        let next = PspCallRequested {
            order: result.order.clone(),
            attempt: result.attempt + 1,
        };
        let key = result.order.payment_order_id.to_string();
        let event = envelope.child(event_type::PSP_CALL_REQUESTED, &key, next.attempt, &next);
        self.ctx
            .retry_queue
            .schedule(&event, due.timestamp_millis())
            .await
            .map_err(Failure::Retryable)
    }
}
