//! RefundLedgerRecorder.
//!
//! - consumes `refund_finalized_topic` (key paymentOrderId)
//! - a SUCCEEDED refund: asks the posting-rules component's `post-refund`
//!   (posting-rules 2.0.0) for journal entries, checks the host invariants
//!   (balanced, ≥ 2 postings, the order's currency, platform or this
//!   seller's accounts) and writes them with the ledger recorder's own
//!   statements (`store::ledger::record_all`)
//! - produces `ledger_entries_recorded_topic` (key sellerId), which the
//!   balance consumer applies like any other journals
//! - a FAILED refund posts nothing
//! - idempotency: a refund is finalized once, so its event id is the
//!   recording's source id; a replay re-emits the recording and never
//!   re-runs the rule
//! - DLQ: undecodable events, rule errors, invariant violations, component
//!   failures, a posting-rules 1.0.0 component (no `post-refund`)

use std::time::Instant;

use async_trait::async_trait;

use super::decision::{Decision, Failure};
use super::ledger_recording_consumer::count_shadow;
use super::outbound::Outbound;
use super::stage_loop::Stage;
use super::PipelineContext;
use crate::components::bindings::rules::paynode::posting_rules::types as wit;
use crate::components::invariants::{check_journals, PostingScope};
use crate::components::posting::recorded_journals;
use crate::components::registry::Active;
use crate::components::runtime::RefundedOrder;
use crate::components::Slot;
use crate::domain::events::{event_type, Envelope, LedgerEntriesRecorded};
use crate::domain::refund::{RefundFinalized, RefundStatus};
use crate::kafka::topic;
use crate::store::ledger;

pub struct RefundLedgerRecorder {
    ctx: PipelineContext,
}

impl RefundLedgerRecorder {
    pub fn new(ctx: PipelineContext) -> Self {
        RefundLedgerRecorder { ctx }
    }

    /// Runs one version of the rules' `post-refund` and checks its output;
    /// nothing is written. `metered`: counted in the component metrics (the
    /// active version; a shadow has its own counter).
    async fn run_version(
        &self,
        active: &Active,
        envelope: &Envelope,
        refund: &RefundFinalized,
        metered: bool,
    ) -> Result<LedgerEntriesRecorded, Failure> {
        let order = &refund.order;
        let input = RefundedOrder {
            refund_id: refund.refund_id.to_string(),
            payment_order_id: order.payment_order_id.to_string(),
            payment_id: order.payment_id.to_string(),
            seller_id: order.seller_id.clone(),
            captured: wit::Money {
                quantity: order.amount.quantity,
                currency: order.amount.currency.clone(),
            },
            amount: wit::Money {
                quantity: refund.refund_amount.quantity,
                currency: refund.refund_amount.currency.clone(),
            },
            psp_reference: refund.psp_reference.clone().unwrap_or_default(),
        };
        let env = self
            .ctx
            .registry
            .env(Slot::PostingRules, &envelope.trace_id);
        let started = Instant::now();
        let result = self
            .ctx
            .registry
            .runtime()
            .post_refund(&active.loaded, &env, &active.config, &input)
            .await;
        if metered {
            crate::metrics::component_call(
                Slot::PostingRules.as_str(),
                started,
                result.as_ref().err(),
            );
        }
        let entries = result
            .map_err(Failure::from)?
            .0
            .map_err(|e| Failure::Poison {
                class: "rule_error",
                message: format!("{}: {}", e.code, e.message),
            })?;
        let scope = PostingScope {
            seller_id: &order.seller_id,
            currency: &order.amount.currency,
        };
        if let Err(violation) = check_journals(&entries, &scope) {
            if metered {
                crate::metrics::component_failure(Slot::PostingRules.as_str(), violation.class());
            }
            return Err(Failure::from(violation));
        }
        Ok(LedgerEntriesRecorded {
            payment_order_id: order.payment_order_id,
            seller_id: order.seller_id.clone(),
            source_event_id: envelope.event_id,
            rule_sha256: active.loaded.sha256.clone(),
            journals: recorded_journals(order.payment_order_id, &order.amount.currency, entries),
        })
    }

    async fn record(&self, envelope: &Envelope, refund: &RefundFinalized) -> Decision {
        let existing = ledger::find_recordings(&self.ctx.pool, &[envelope.event_id]).await?;
        let recorded = match existing.into_values().next() {
            Some(recorded) => recorded,
            None => {
                let active = self
                    .ctx
                    .registry
                    .active(Slot::PostingRules)
                    .map_err(Failure::from)?;
                let fresh = self.run_version(&active, envelope, refund, true).await?;
                let mut written =
                    ledger::record_all(&self.ctx.pool, &[(&fresh, envelope.trace_id.as_str())])
                        .await?;
                let recorded = written
                    .remove(&envelope.event_id)
                    .ok_or_else(|| Failure::Retryable(anyhow::anyhow!("recording vanished")))?;
                // A candidate on shadow sees refunds too (once, as it sees
                // each order once: not on a replayed recording).
                if let Some(candidate) = self.ctx.registry.shadow(Slot::PostingRules) {
                    let result = self.run_version(&candidate, envelope, refund, false).await;
                    count_shadow(&candidate, result, &recorded);
                }
                recorded
            }
        };
        let aggregate = refund.refund_id.to_string();
        let event = envelope.child(
            event_type::LEDGER_ENTRIES_RECORDED,
            &aggregate,
            0,
            &recorded,
        );
        Ok(vec![Outbound::new(
            topic::LEDGER_ENTRIES_RECORDED,
            recorded.seller_id.clone(),
            event,
        )])
    }
}

#[async_trait]
impl Stage for RefundLedgerRecorder {
    fn name(&self) -> &'static str {
        "refund_ledger_recorder"
    }

    fn input_topic(&self) -> &'static str {
        topic::REFUND_FINALIZED
    }

    async fn handle(&self, envelope: &Envelope) -> Decision {
        let refund: RefundFinalized = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad RefundFinalized: {e}"),
        })?;
        match refund.status {
            RefundStatus::Succeeded => self.record(envelope, &refund).await,
            RefundStatus::Failed => Ok(Vec::new()),
            other => Err(Failure::Poison {
                class: "invalid_event",
                message: format!("a finalized refund cannot be {}", other.as_str()),
            }),
        }
    }
}
