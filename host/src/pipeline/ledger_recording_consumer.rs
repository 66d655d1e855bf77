//! LedgerRecordingConsumer.
//!
//! - consumes `ledger_record_request_queue_topic` (key sellerId)
//! - asks the posting-rules component for journal entries, checks the host
//!   invariants (balanced, ≥ 2 postings, order's currency, platform or this
//!   seller's accounts), then writes journals + postings + one
//!   `ledger_recordings` row per source event in one DB transaction
//! - produces `ledger_entries_recorded_topic` (key sellerId)
//! - idempotency: a source event already recorded re-emits its recording and
//!   never re-runs the rule (a rule swapped in between cannot post twice)
//! - DLQ: undecodable events, rule errors, invariant violations, component failures

use std::collections::BTreeSet;
use std::time::Instant;

use async_trait::async_trait;

use super::stage_loop::{Decision, Failure, Outbound, Stage};
use super::PipelineContext;
use crate::components::bindings::rules::paynode::posting_rules::types as wit;
use crate::components::invariants::{check_journals, PostingScope};
use crate::components::registry::Active;
use crate::components::Slot;
use crate::domain::events::{
    event_type, Envelope, FinalStatus, LedgerEntriesRecorded, OrderFinalized, RecordedJournal,
    RecordedPosting,
};
use crate::kafka::topic;
use crate::store::ledger;

pub struct LedgerRecordingConsumer {
    ctx: PipelineContext,
}

impl LedgerRecordingConsumer {
    pub fn new(ctx: PipelineContext) -> Self {
        LedgerRecordingConsumer { ctx }
    }

    async fn run_rules(
        &self,
        envelope: &Envelope,
        finalized: &OrderFinalized,
    ) -> Result<LedgerEntriesRecorded, Failure> {
        let active = self
            .ctx
            .registry
            .active(Slot::PostingRules)
            .map_err(Failure::from)?;
        self.run_version(&active, envelope, finalized, true).await
    }

    /// Runs one version of the rules and checks its output; nothing is
    /// written. `metered`: counted in the component metrics and alerts
    /// (the active version; a shadow has its own counter).
    async fn run_version(
        &self,
        active: &Active,
        envelope: &Envelope,
        finalized: &OrderFinalized,
        metered: bool,
    ) -> Result<LedgerEntriesRecorded, Failure> {
        let order = rule_input(finalized);
        let env = self
            .ctx
            .registry
            .env(Slot::PostingRules, &envelope.trace_id);
        let started = Instant::now();
        let result = self
            .ctx
            .registry
            .runtime()
            .post(&active.loaded, &env, &active.config, &order)
            .await;
        if metered {
            crate::metrics::component_call(
                Slot::PostingRules.as_str(),
                started,
                result.as_ref().err(),
            );
        }
        let entries = match result.map_err(Failure::from)?.0 {
            Ok(entries) => entries,
            Err(rule_error) => {
                return Err(Failure::Poison {
                    class: "rule_error",
                    message: format!("{}: {}", rule_error.code, rule_error.message),
                })
            }
        };
        let scope = PostingScope {
            seller_id: &finalized.order.seller_id,
            currency: &finalized.order.amount.currency,
        };
        if let Err(violation) = check_journals(&entries, &scope) {
            if metered {
                crate::metrics::component_failure(Slot::PostingRules.as_str(), violation.class());
            }
            return Err(Failure::from(violation));
        }
        let order_id = finalized.order.payment_order_id;
        let journals = recorded_journals(order_id, &finalized.order.amount.currency, entries);
        Ok(LedgerEntriesRecorded {
            payment_order_id: order_id,
            seller_id: finalized.order.seller_id.clone(),
            source_event_id: envelope.event_id,
            rule_sha256: active.loaded.sha256.clone(),
            journals,
        })
    }

    /// Runs the shadow candidate, if any, on the same order and counts how
    /// its journals compare with what was recorded. Never applied, never
    /// fails the record: a broken candidate only shows up in the counts.
    async fn shadow(
        &self,
        envelope: &Envelope,
        finalized: &OrderFinalized,
        recorded: &LedgerEntriesRecorded,
    ) {
        let Some(candidate) = self.ctx.registry.shadow(Slot::PostingRules) else {
            return;
        };
        let result = match self
            .run_version(&candidate, envelope, finalized, false)
            .await
        {
            Err(Failure::Poison { class, message }) => {
                tracing::warn!(candidate = %candidate.loaded.sha256, class, %message, "shadow rules rejected");
                "rejected"
            }
            Err(Failure::Retryable(error)) => {
                // The runtime was busy: no verdict on the candidate.
                tracing::warn!(candidate = %candidate.loaded.sha256, error = %format!("{error:#}"), "shadow rules could not run");
                "skipped"
            }
            Ok(shadow) if posting_lines(&shadow.journals) == posting_lines(&recorded.journals) => {
                "same"
            }
            Ok(_) => {
                tracing::info!(candidate = %candidate.loaded.sha256, "shadow rules would post differently");
                "changed"
            }
        };
        crate::metrics::component_shadow(Slot::PostingRules.as_str(), result);
    }
}

/// What the posting rules see of a finalized order.
pub fn rule_input(finalized: &OrderFinalized) -> wit::FinalizedOrder {
    wit::FinalizedOrder {
        payment_order_id: finalized.order.payment_order_id.to_string(),
        payment_id: finalized.order.payment_id.to_string(),
        seller_id: finalized.order.seller_id.clone(),
        amount: wit::Money {
            quantity: finalized.order.amount.quantity,
            currency: finalized.order.amount.currency.clone(),
        },
        status: match finalized.status {
            FinalStatus::Succeeded => wit::OrderStatus::Succeeded,
            FinalStatus::Failed => wit::OrderStatus::Failed,
        },
        psp_reference: finalized.psp_reference.clone().unwrap_or_default(),
    }
}

/// The rule's entries (already checked) as the journals the ledger stores.
pub fn recorded_journals(
    order_id: uuid::Uuid,
    currency: &str,
    entries: Vec<wit::JournalEntry>,
) -> Vec<RecordedJournal> {
    entries
        .into_iter()
        .map(|entry| RecordedJournal {
            journal_id: journal_id(order_id, &entry.kind, &entry.key),
            kind: entry.kind,
            currency: currency.to_string(),
            postings: entry
                .postings
                .into_iter()
                .map(|p| RecordedPosting {
                    account: p.account,
                    side: match p.side {
                        wit::Side::Debit => "debit".into(),
                        wit::Side::Credit => "credit".into(),
                    },
                    amount_minor: p.amount.quantity,
                })
                .collect(),
        })
        .collect()
}

/// One line per posting (`journal account side amount currency`), sorted:
/// two journal sets are equal when their lines are.
pub fn posting_lines(journals: &[RecordedJournal]) -> BTreeSet<String> {
    journals
        .iter()
        .flat_map(|j| {
            j.postings.iter().map(move |p| {
                format!(
                    "{} {} {} {} {}",
                    j.journal_id, p.account, p.side, p.amount_minor, j.currency
                )
            })
        })
        .collect()
}

/// Deterministic and unique per (order, kind, key).
pub fn journal_id(order_id: uuid::Uuid, kind: &str, key: &str) -> String {
    if key.is_empty() {
        format!("{kind}:{order_id}")
    } else {
        format!("{kind}:{order_id}:{key}")
    }
}

fn recorded_event(envelope: &Envelope, recorded: &LedgerEntriesRecorded) -> Outbound {
    let aggregate = recorded.payment_order_id.to_string();
    let event = envelope.child(event_type::LEDGER_ENTRIES_RECORDED, &aggregate, 1, recorded);
    Outbound::new(
        topic::LEDGER_ENTRIES_RECORDED,
        recorded.seller_id.clone(),
        event,
    )
}

#[async_trait]
impl Stage for LedgerRecordingConsumer {
    fn name(&self) -> &'static str {
        "ledger_recording_consumer"
    }

    fn input_topic(&self) -> &'static str {
        topic::LEDGER_RECORD_REQUEST
    }

    async fn handle(&self, envelope: &Envelope) -> Decision {
        if let Some(recorded) = ledger::find_recording(&self.ctx.pool, envelope.event_id).await? {
            return Ok(vec![recorded_event(envelope, &recorded)]);
        }
        let finalized: OrderFinalized = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad LedgerRecordingRequested: {e}"),
        })?;
        let recorded = self.run_rules(envelope, &finalized).await?;
        let recorded = ledger::record(&self.ctx.pool, &recorded, &envelope.trace_id).await?;
        tracing::info!(journals = recorded.journals.len(), rule = %recorded.rule_sha256, "ledger entries recorded");
        self.shadow(envelope, &finalized, &recorded).await;
        Ok(vec![recorded_event(envelope, &recorded)])
    }
}
