//! RefundExecutor.
//!
//! - consumes `refund_requested_topic` (key paymentOrderId), one event per
//!   attempt of a refund
//! - produces `refund_finalized_topic` (key paymentOrderId) once the refund
//!   is SUCCEEDED or FAILED (one event id per refund)
//! - the refund goes to the adapter *activation* its order is pinned to
//!   (the one that charged it), with the refund's own PSP idempotency key
//! - idempotency: the `refund_attempts` row is inserted before the call. A
//!   redelivery finds it: with an outcome, that outcome is applied again
//!   (a guarded no-op) without calling; without one, the PSP may have
//!   refunded, so only `refund-status` is asked, never `refund`
//! - `unknown` is settled by `refund-status` (`psp.status_checks` times),
//!   else REQUIRES_REVIEW, where the review janitor asks `refund-status`
//!   again on its schedule and a PSP notification may settle it; a
//!   component failure after a request left is `unknown`
//! - `transient`: the retry-policy component decides; the next attempt's
//!   event waits in the Redis retry queue (the retry scheduler routes it
//!   back here by event type); giving up, or the host's attempt cap, is FAILED
//! - only exactly the next attempt of a REQUESTED refund is called; every
//!   status change is guarded and an event follows only a final status
//! - DLQ: undecodable or inconsistent events, failing components, an order
//!   pinned to a psp-adapter 1.0.0 (no `refund`)

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;

use super::component_call::{ask_retry_policy, psp_answer, random_from};
use super::decision::{Decision, Failure};
use super::outbound::Outbound;
use super::stage_loop::Stage;
use super::{review_janitor, PipelineContext};
use crate::components::bindings::adapter::paynode::psp_adapter::types as wit;
use crate::components::bindings::policy::paynode::retry_policy::types as policy;
use crate::components::registry::Active;
use crate::components::runtime::RefundRequest;
use crate::components::Slot;
use crate::domain::events::{event_type, Envelope};
use crate::domain::payment::{OutcomeKind, PspOutcome};
use crate::domain::refund::{RefundRequested, RefundStatus, RefundTransition};
use crate::kafka::topic;
use crate::store::payments::OrderRow;
use crate::store::refunds::{self, Change, RefundAttemptRow, RefundRow};

pub struct RefundExecutor {
    ctx: PipelineContext,
}

/// What the outcome of an attempt leads to.
enum Next {
    Final(RefundStatus, Option<String>),
    Review(String),
    RetryAfterMs(u64),
}

impl RefundExecutor {
    pub fn new(ctx: PipelineContext) -> Self {
        RefundExecutor { ctx }
    }

    /// The refund and its order, checked against the event.
    async fn load(&self, request: &RefundRequested) -> Result<(RefundRow, OrderRow), Failure> {
        let poison = |message: String| Failure::Poison {
            class: "invalid_event",
            message,
        };
        let refund = refunds::get(&self.ctx.pool, request.refund_id)
            .await?
            .ok_or_else(|| poison(format!("unknown refund {}", request.refund_id)))?;
        if refund.payment_order_id != request.order.payment_order_id
            || refund.amount_minor != request.refund_amount.quantity
            || refund.currency != request.refund_amount.currency
        {
            return Err(poison("event disagrees with the stored refund".into()));
        }
        let order = crate::store::orders::get(&self.ctx.pool, refund.payment_order_id)
            .await?
            .ok_or_else(|| poison("refund of an unknown order".into()))?;
        Ok((refund, order))
    }

    async fn execute(&self, envelope: &Envelope, request: &RefundRequested) -> Decision {
        let (refund, order) = self.load(request).await?;
        let attempt = request.attempt as i32;
        if refund.status != RefundStatus::Requested || attempt != refund.last_applied_attempt + 1 {
            tracing::info!(refund_id = %refund.refund_id, attempt, status = refund.status.as_str(), "stale refund request");
            return Ok(self.finalized(envelope, &refund, &order));
        }
        let activation = order.adapter_activation_id.ok_or_else(|| Failure::Poison {
            class: "invariant_broken",
            message: "refund of an order without a pinned adapter".into(),
        })?;
        let adapter = self
            .ctx
            .registry
            .activation(Slot::PspAdapter, activation)
            .await
            .map_err(Failure::from)?;
        let call = refund_request(&refund, &order, request.attempt);
        let claim = refunds::claim_attempt(
            &self.ctx.pool,
            refund.refund_id,
            attempt,
            &adapter.loaded.sha256,
        )
        .await?;
        let (outcome, settled) = match claim {
            Err(row) if row.outcome.is_some() => (from_row(&row), row.settled_by_status),
            claim => {
                let may_have_refunded = claim.is_err();
                self.call_psp(&adapter, &call, may_have_refunded, &envelope.trace_id)
                    .await?
            }
        };
        let row =
            refunds::finish_attempt(&self.ctx.pool, refund.refund_id, attempt, &outcome, settled)
                .await?;
        let outcome = from_row(&row);
        let next = self
            .next(envelope, &refund, request.attempt, &outcome)
            .await?;
        self.apply(envelope, request, &refund, &order, next, &outcome)
            .await
    }

    /// `refund` (or only `refund-status` when an earlier call may have
    /// refunded), then `refund-status` while the outcome is unknown.
    async fn call_psp(
        &self,
        adapter: &Active,
        request: &RefundRequest,
        may_have_refunded: bool,
        trace_id: &str,
    ) -> Result<(PspOutcome, bool), Failure> {
        let runtime = self.ctx.registry.runtime();
        // The pinned activation's egress policy, whatever is active now.
        let env = self.ctx.registry.adapter_env(adapter, trace_id);
        let (loaded, config) = (&adapter.loaded, &adapter.config);
        let mut outcome = if may_have_refunded {
            wit::Outcome::Unknown("previous call did not record an outcome".into())
        } else {
            let started = Instant::now();
            let result = runtime.refund(loaded, &env, config, request, false).await;
            psp_answer(started, result)?
        };
        let mut settled = false;
        let psp = &self.ctx.config.psp;
        for _ in 0..psp.status_checks {
            if !matches!(outcome, wit::Outcome::Unknown(_)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(psp.status_check_delay_ms)).await;
            match runtime.refund(loaded, &env, config, request, true).await {
                Ok((answer, _)) => {
                    settled = !matches!(answer, wit::Outcome::Unknown(_));
                    outcome = answer;
                }
                Err(error) => tracing::warn!(%error, "refund-status failed"),
            }
        }
        Ok((to_domain(outcome), settled))
    }

    async fn next(
        &self,
        envelope: &Envelope,
        refund: &RefundRow,
        attempt: u32,
        outcome: &PspOutcome,
    ) -> Result<Next, Failure> {
        let code = outcome.code.clone().unwrap_or_default();
        Ok(match outcome.kind {
            OutcomeKind::Succeeded => Next::Final(RefundStatus::Succeeded, None),
            OutcomeKind::Declined => {
                Next::Final(RefundStatus::Failed, Some(format!("declined: {code}")))
            }
            OutcomeKind::Unknown => Next::Review(
                outcome
                    .message
                    .clone()
                    .unwrap_or_else(|| "unknown PSP outcome".into()),
            ),
            OutcomeKind::Transient if attempt >= self.ctx.config.retry.max_attempts => Next::Final(
                RefundStatus::Failed,
                Some(format!("gave up after {attempt} PSP calls (host cap)")),
            ),
            OutcomeKind::Transient => self.ask_policy(envelope, refund, attempt, code).await?,
        })
    }

    async fn ask_policy(
        &self,
        envelope: &Envelope,
        refund: &RefundRow,
        attempt: u32,
        failure_code: String,
    ) -> Result<Next, Failure> {
        let context = policy::RetryContext {
            payment_order_id: refund.refund_id.to_string(),
            attempt,
            failure_code,
            elapsed_ms: (Utc::now() - refund.created_at).num_milliseconds().max(0) as u64,
            random: random_from(envelope),
        };
        Ok(
            match ask_retry_policy(&self.ctx, &envelope.trace_id, &context).await? {
                policy::Decision::RetryAfter(ms) => Next::RetryAfterMs(ms),
                policy::Decision::GiveUp(reason) => Next::Final(
                    RefundStatus::Failed,
                    Some(reason.chars().take(500).collect()),
                ),
            },
        )
    }

    /// The guarded change `next` asks for; an event only for a final refund.
    async fn apply(
        &self,
        envelope: &Envelope,
        request: &RefundRequested,
        refund: &RefundRow,
        order: &OrderRow,
        next: Next,
        outcome: &PspOutcome,
    ) -> Decision {
        let (transition, to, reason) = match next {
            Next::RetryAfterMs(ms) => {
                let retry = RefundRequested {
                    attempt: request.attempt + 1,
                    ..request.clone()
                };
                let event = envelope.child(
                    event_type::REFUND_REQUESTED,
                    &refund.refund_id.to_string(),
                    retry.attempt,
                    &retry,
                );
                let due = Utc::now() + chrono::Duration::milliseconds(ms as i64);
                // Redis first: if the guarded update below is then lost, a
                // redelivery re-applies this outcome and schedules the same
                // event id again. The update records when it is due, for
                // the sweeper should Redis lose it.
                self.ctx
                    .retry_queue
                    .schedule(&event, due.timestamp_millis())
                    .await
                    .map_err(Failure::Retryable)?;
                let attempt = request.attempt as i32;
                refunds::pass_attempt(&self.ctx.pool, refund.refund_id, attempt, due).await?;
                crate::metrics::retry_event("scheduled");
                return Ok(Vec::new());
            }
            Next::Review(reason) => (
                RefundTransition::RequireReview,
                RefundStatus::RequiresReview,
                Some(reason),
            ),
            Next::Final(status, reason) => (RefundTransition::Finalize, status, reason),
        };
        let change = Change {
            refund_id: refund.refund_id,
            transition,
            to,
            attempt: request.attempt as i32,
            in_order: true,
            psp_reference: outcome.psp_reference.as_deref(),
            reason: reason.as_deref(),
            // Entering review schedules the janitor's first refund-status.
            first_review_at: review_janitor::first_check(&self.ctx.config.psp),
        };
        let mut conn = self.ctx.pool.acquire().await?;
        if refunds::transition(&mut conn, &change).await? {
            crate::metrics::refund(match to {
                RefundStatus::Succeeded => "succeeded",
                RefundStatus::Failed => "failed",
                _ => "requires_review",
            });
            tracing::info!(refund_id = %refund.refund_id, status = to.as_str(), "refund status applied");
        }
        drop(conn);
        let now = refunds::get(&self.ctx.pool, refund.refund_id)
            .await?
            .ok_or_else(|| Failure::Retryable(anyhow::anyhow!("refund vanished")))?;
        Ok(self.finalized(envelope, &now, order))
    }

    /// The finalized event of a final refund (re-emitted on every replay:
    /// its id is fixed, so downstream applies it once); nothing otherwise.
    fn finalized(
        &self,
        envelope: &Envelope,
        refund: &RefundRow,
        order: &OrderRow,
    ) -> Vec<Outbound> {
        refund
            .finalized(order.order_ref())
            .map(|finalized| {
                let event = finalized.envelope(&envelope.trace_id, Some(envelope.event_id));
                Outbound::new(
                    topic::REFUND_FINALIZED,
                    order.payment_order_id.to_string(),
                    event,
                )
            })
            .into_iter()
            .collect()
    }
}

/// The request of `attempt` of a refund (its `refund-status` asks with the
/// same one).
pub(crate) fn refund_request(refund: &RefundRow, order: &OrderRow, attempt: u32) -> RefundRequest {
    let money = |quantity: i64| wit::Money {
        quantity,
        currency: order.currency.clone(),
    };
    RefundRequest {
        refund_id: refund.refund_id.to_string(),
        payment_order_id: order.payment_order_id.to_string(),
        payment_id: order.payment_id.to_string(),
        seller_id: order.seller_id.clone(),
        charge_reference: order.psp_reference.clone().unwrap_or_default(),
        charge_idempotency_key: order.psp_idempotency_key.clone(),
        captured: money(order.amount_minor),
        amount: money(refund.amount_minor),
        reason: refund.reason.clone(),
        attempt,
        idempotency_key: refund.psp_idempotency_key.clone(),
    }
}

fn to_domain(outcome: wit::Outcome) -> PspOutcome {
    match outcome {
        wit::Outcome::Succeeded(reference) => PspOutcome::succeeded(reference),
        wit::Outcome::Declined(f) => PspOutcome::failure(OutcomeKind::Declined, f.code, f.message),
        wit::Outcome::Transient(f) => {
            PspOutcome::failure(OutcomeKind::Transient, f.code, f.message)
        }
        wit::Outcome::Unknown(reason) => PspOutcome::unknown(reason),
    }
}

/// What an attempt row recorded (its outcome is set: the caller wrote it).
fn from_row(row: &RefundAttemptRow) -> PspOutcome {
    PspOutcome {
        kind: row
            .outcome
            .as_deref()
            .and_then(OutcomeKind::parse)
            .unwrap_or(OutcomeKind::Unknown),
        code: row.code.clone(),
        message: row.message.clone(),
        psp_reference: row.psp_reference.clone(),
    }
}

#[async_trait]
impl Stage for RefundExecutor {
    fn name(&self) -> &'static str {
        "refund_executor"
    }

    fn input_topic(&self) -> &'static str {
        topic::REFUND_REQUESTED
    }

    async fn handle(&self, envelope: &Envelope) -> Decision {
        let request: RefundRequested = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad RefundRequested: {e}"),
        })?;
        if request.attempt == 0 || request.attempt > self.ctx.config.retry.max_attempts {
            return Err(Failure::Poison {
                class: "invalid_event",
                message: format!(
                    "attempt {} outside 1..={}",
                    request.attempt, self.ctx.config.retry.max_attempts
                ),
            });
        }
        self.execute(envelope, &request).await
    }
}
