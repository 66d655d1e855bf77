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

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tracing::Instrument;
use uuid::Uuid;

use super::consume::Inbound;
use super::decision::{
    bounded, decode, deterministic_class, event_span, Decision, Decisions, Failure,
};
use super::outbound::Outbound;
use super::stage_loop::Stage;
use super::PipelineContext;
use crate::components::invariants::{check_journals, PostingScope};
use crate::components::posting::{recorded_journals, rule_input};
use crate::components::registry::Active;
use crate::components::Slot;
use crate::domain::events::{event_type, Envelope, LedgerEntriesRecorded, OrderFinalized};
use crate::domain::ledger::posting_lines;
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
        let result = self
            .run_version(&candidate, envelope, finalized, false)
            .await;
        count_shadow(&candidate, result, recorded);
    }
}

/// Counts how a shadow candidate's journals compare with what was recorded
/// (`component_shadow_total{result}`): never applied, and a broken candidate
/// only shows up in the counts. Shared with the refund recorder.
pub(super) fn count_shadow(
    candidate: &Active,
    result: Result<LedgerEntriesRecorded, Failure>,
    recorded: &LedgerEntriesRecorded,
) {
    let result = match result {
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

/// The recorded event's id follows the finalized attempt it records, so two
/// finalizations of one order (e.g. an admin's after a review) never share it.
fn recorded_event(envelope: &Envelope, attempt: u32, recorded: &LedgerEntriesRecorded) -> Outbound {
    let aggregate = recorded.payment_order_id.to_string();
    let event = envelope.child(
        event_type::LEDGER_ENTRIES_RECORDED,
        &aggregate,
        attempt,
        recorded,
    );
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

    async fn handle(&self, _envelope: &Envelope) -> Decision {
        unreachable!("handle_batch is overridden")
    }

    /// The whole batch at once: recordings already made are re-emitted,
    /// the rules run concurrently for the rest, and every new recording is
    /// written in one transaction. Records of one seller are not serialized:
    /// their journals belong to different orders and commute.
    async fn handle_batch(&self, batch: &[Inbound], concurrency: usize) -> Vec<Decision> {
        let (mut decisions, items) = Decisions::decode(batch, decode_item);
        let ids: Vec<Uuid> = items.iter().map(|(_, (e, _))| e.event_id).collect();
        let existing = match ledger::find_recordings(&self.ctx.pool, &ids).await {
            Ok(existing) => existing,
            Err(error) => return Failure::retry_all(batch.len(), &error.into()),
        };
        let mut rules: Vec<BoxFuture<'_, (usize, Result<LedgerEntriesRecorded, Failure>)>> =
            Vec::new();
        for (index, (envelope, finalized)) in &items {
            if !existing.contains_key(&envelope.event_id) {
                let index = *index;
                let span = event_span(self.name(), envelope);
                rules.push(Box::pin(
                    async move { (index, self.run_rules(envelope, finalized).await) }
                        .instrument(span),
                ));
            }
        }
        let ruled = bounded(rules, concurrency).await;
        let mut fresh = Vec::new();
        for (index, result) in ruled {
            match result {
                Ok(recorded) => fresh.push((index, recorded)),
                Err(failure) => decisions.set(index, Err(failure)),
            }
        }
        let traces: HashMap<usize, &str> = items
            .iter()
            .map(|(index, (e, _))| (*index, e.trace_id.as_str()))
            .collect();
        let written = match self.write(&fresh, &traces).await {
            Ok(written) => written,
            Err(error) => return Failure::retry_all(batch.len(), &error),
        };
        for (index, (envelope, finalized)) in &items {
            if decisions.is_set(*index) {
                continue;
            }
            let decision = match existing.get(&envelope.event_id) {
                Some(recorded) => Ok(vec![recorded_event(
                    envelope,
                    finalized.final_attempt,
                    recorded,
                )]),
                None => match &written[index] {
                    Ok(recorded) => {
                        let span = event_span(self.name(), envelope);
                        span.in_scope(|| tracing::info!(journals = recorded.journals.len(), rule = %recorded.rule_sha256, "ledger entries recorded"));
                        self.shadow(envelope, finalized, recorded)
                            .instrument(span)
                            .await;
                        Ok(vec![recorded_event(
                            envelope,
                            finalized.final_attempt,
                            recorded,
                        )])
                    }
                    Err((class, message)) => Err(Failure::Poison {
                        class,
                        message: message.clone(),
                    }),
                },
            };
            decisions.set(*index, decision);
        }
        decisions.into_vec()
    }
}

type Written = HashMap<usize, Result<LedgerEntriesRecorded, (&'static str, String)>>;

impl LedgerRecordingConsumer {
    /// All new recordings in one transaction. If that fails for good (a
    /// data or constraint error), each alone: only the bad one is poisoned.
    async fn write(
        &self,
        fresh: &[(usize, LedgerEntriesRecorded)],
        traces: &HashMap<usize, &str>,
    ) -> anyhow::Result<Written> {
        let rows: Vec<(&LedgerEntriesRecorded, &str)> =
            fresh.iter().map(|(i, r)| (r, traces[i])).collect();
        let mut written = Written::new();
        match ledger::record_all(&self.ctx.pool, &rows).await {
            Ok(mut recorded) => {
                for (index, r) in fresh {
                    let kept = recorded.remove(&r.source_event_id).expect("recorded");
                    written.insert(*index, Ok(kept));
                }
            }
            Err(error) if deterministic_class(&error).is_some() => {
                for ((index, r), row) in fresh.iter().zip(&rows) {
                    match ledger::record_all(&self.ctx.pool, std::slice::from_ref(row)).await {
                        Ok(mut recorded) => {
                            written.insert(
                                *index,
                                Ok(recorded.remove(&r.source_event_id).expect("recorded")),
                            );
                        }
                        Err(error) => match deterministic_class(&error) {
                            Some(class) => {
                                written.insert(*index, Err((class, format!("{error:#}"))));
                            }
                            None => return Err(error.into()),
                        },
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
        Ok(written)
    }
}

fn decode_item(record: &Inbound) -> Result<(Envelope, OrderFinalized), Failure> {
    let envelope = decode(record)?;
    let finalized: OrderFinalized = envelope.payload().map_err(|e| Failure::Poison {
        class: "undecodable",
        message: format!("bad LedgerRecordingRequested: {e}"),
    })?;
    Ok((envelope, finalized))
}
