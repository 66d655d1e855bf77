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

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use futures::future::BoxFuture;
use tracing::Instrument;
use uuid::Uuid;

use super::component_call::{ask_retry_policy, random_from};
use super::consume::Inbound;
use super::decision::{
    bounded, decode, deterministic_class, event_span, rounds, Decision, Decisions, Failure,
};
use super::outbound::Outbound;
use super::stage_loop::Stage;
use super::{review_janitor, PipelineContext};
use crate::components::bindings::policy::paynode::retry_policy::types as wit;
use crate::domain::events::{
    event_type, Envelope, FinalStatus, OrderFinalized, PspCallRequested, PspResultUpdated,
};
use crate::domain::payment::{OutcomeKind, Transition};
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
        let context = wit::RetryContext {
            payment_order_id: result.order.payment_order_id.to_string(),
            attempt: result.attempt,
            failure_code: result.outcome.code.clone().unwrap_or_default(),
            elapsed_ms: (Utc::now() - order.created_at).num_milliseconds().max(0) as u64,
            random: random_from(envelope),
        };
        Ok(
            match ask_retry_policy(&self.ctx, &envelope.trace_id, &context).await? {
                wit::Decision::RetryAfter(ms) => Next::RetryAfterMs(ms),
                wit::Decision::GiveUp(reason) => {
                    Next::Final(FinalStatus::Failed, Some(truncate(&reason, 500)))
                }
            },
        )
    }
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

/// One decoded result.
struct Item {
    envelope: Envelope,
    result: PspResultUpdated,
}

/// What the batch decided for one result before writing.
enum Plan {
    /// Decided without a write (replay, stale, poison).
    Done(Decision),
    Write(orders::ResultWrite),
}

fn decode_item(record: &Inbound) -> Result<Item, Failure> {
    let envelope = decode(record)?;
    let result = envelope.payload().map_err(|e| Failure::Poison {
        class: "undecodable",
        message: format!("bad PaymentOrderPspResultUpdated: {e}"),
    })?;
    Ok(Item { envelope, result })
}

#[async_trait]
impl Stage for PaymentOrderPspResultApplier {
    fn name(&self) -> &'static str {
        "payment_order_psp_result_applier"
    }

    fn input_topic(&self) -> &'static str {
        topic::PSP_RESULT_UPDATED
    }

    async fn handle(&self, _envelope: &Envelope) -> Decision {
        unreachable!("handle_batch is overridden")
    }

    /// Decides the batch in rounds of one result per order (a round sees
    /// each order as the previous round left it); each round's writes
    /// commit in one transaction.
    async fn handle_batch(&self, batch: &[Inbound], concurrency: usize) -> Vec<Decision> {
        let (mut decisions, items) = Decisions::decode(batch, decode_item);
        for round in rounds(&items, |item| item.result.order.payment_order_id) {
            let round: Vec<&(usize, Item)> = round.into_iter().map(|i| &items[i]).collect();
            match self.round(&round, concurrency).await {
                Ok(decided) => decisions.extend(decided),
                // The batch is rewound and retried as a whole.
                Err(error) => return Failure::retry_all(batch.len(), &error),
            }
        }
        decisions.into_vec()
    }
}

impl PaymentOrderPspResultApplier {
    /// Reads the round's orders, plans every result (retry policies run
    /// concurrently), writes all transitions in one transaction, then turns
    /// what applied into events and Redis retries.
    async fn round(
        &self,
        round: &[&(usize, Item)],
        concurrency: usize,
    ) -> anyhow::Result<Vec<(usize, Decision)>> {
        let ids: Vec<Uuid> = round
            .iter()
            .map(|(_, item)| item.result.order.payment_order_id)
            .collect();
        let orders = orders::get_many(&self.ctx.pool, &ids).await?;
        let mut futures: Vec<BoxFuture<'_, (usize, Plan)>> = Vec::with_capacity(round.len());
        for (index, item) in round.iter().map(|entry| (entry.0, &entry.1)) {
            let order = orders.get(&item.result.order.payment_order_id);
            let span = event_span(self.name(), &item.envelope);
            futures.push(Box::pin(
                async move { (index, self.plan(item, order).await) }.instrument(span),
            ));
        }
        let plans = bounded(futures, concurrency).await;
        let by_index: HashMap<usize, &Item> = round.iter().map(|(i, item)| (*i, item)).collect();
        let writes: Vec<(Uuid, i32, orders::ResultWrite)> = plans
            .iter()
            .filter_map(|(index, plan)| match plan {
                Plan::Write(write) => {
                    let result = &by_index[index].result;
                    Some((
                        result.order.payment_order_id,
                        result.attempt as i32,
                        write.clone(),
                    ))
                }
                Plan::Done(_) => None,
            })
            .collect();
        let applied = self.write(&writes).await?;
        let mut decided = Vec::with_capacity(plans.len());
        for (index, plan) in plans {
            let item = by_index[&index];
            let decision = match plan {
                Plan::Done(decision) => decision,
                Plan::Write(write) => self.after_write(item, write, &applied).await,
            };
            decided.push((index, decision));
        }
        Ok(decided)
    }

    async fn plan(&self, item: &Item, order: Option<&OrderRow>) -> Plan {
        let (envelope, result) = (&item.envelope, &item.result);
        let Some(order) = order else {
            return Plan::Done(Err(Failure::Poison {
                class: "invalid_event",
                message: format!("unknown payment order {}", result.order.payment_order_id),
            }));
        };
        let attempt = result.attempt as i32;
        if attempt <= order.last_applied_attempt {
            return Plan::Done(self.replayed(envelope, result, order).await);
        }
        if !order.status.allows(Transition::Finalize) {
            tracing::info!(
                attempt,
                status = order.status.as_str(),
                "result for a settled, parked or reviewed order ignored"
            );
            return Plan::Done(Ok(Vec::new()));
        }
        match self.decide(envelope, result, order).await {
            Ok(next) => Plan::Write(self.write_for(next, result)),
            Err(failure) => Plan::Done(Err(failure)),
        }
    }

    fn write_for(&self, next: Next, result: &PspResultUpdated) -> orders::ResultWrite {
        match next {
            Next::Final(status, reason) => orders::ResultWrite::Finalize {
                status: status.order_status(),
                psp_reference: result.outcome.psp_reference.clone(),
                reason,
            },
            Next::RetryAfterMs(delay_ms) => orders::ResultWrite::Retry {
                due: Utc::now() + chrono::Duration::milliseconds(delay_ms as i64),
            },
            Next::Review(reason) => orders::ResultWrite::Review {
                reason,
                first_check: review_janitor::first_check(&self.ctx.config.psp),
            },
        }
    }

    /// All writes in one transaction. If that fails for good (a data or
    /// constraint error), each write alone: only the bad one is poisoned.
    async fn write(&self, writes: &[(Uuid, i32, orders::ResultWrite)]) -> anyhow::Result<Written> {
        let mut written = Written::default();
        if writes.is_empty() {
            return Ok(written);
        }
        match orders::apply_results(&self.ctx.pool, writes).await {
            Ok(applied) => written.applied = applied,
            Err(error) if deterministic_class(&error).is_some() => {
                for write in writes {
                    match orders::apply_results(&self.ctx.pool, std::slice::from_ref(write)).await {
                        Ok(applied) => written.applied.extend(applied),
                        Err(error) => match deterministic_class(&error) {
                            Some(class) => {
                                written
                                    .poisoned
                                    .insert(write.0, (class, format!("{error:#}")));
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

    /// Events and Redis retries for a written result; a transition that did
    /// not apply re-emits only what was recorded.
    async fn after_write(
        &self,
        item: &Item,
        write: orders::ResultWrite,
        written: &Written,
    ) -> Decision {
        let (envelope, result) = (&item.envelope, &item.result);
        let order_id = result.order.payment_order_id;
        if let Some((class, message)) = written.poisoned.get(&order_id) {
            return Err(Failure::Poison {
                class,
                message: message.clone(),
            });
        }
        if !written.applied.contains(&order_id) {
            let order = orders::get(&self.ctx.pool, order_id)
                .await?
                .ok_or_else(|| Failure::Retryable(anyhow::anyhow!("order {order_id} vanished")))?;
            return self.replayed(envelope, result, &order).await;
        }
        match write {
            orders::ResultWrite::Finalize { status, reason, .. } => {
                let status = FinalStatus::of(status).expect("finalize writes a final status");
                Ok(vec![finalized_event(envelope, result, status, reason)])
            }
            orders::ResultWrite::Retry { due } => {
                self.enqueue_retry(envelope, result, due).await?;
                crate::metrics::retry_event("scheduled");
                Ok(Vec::new())
            }
            orders::ResultWrite::Review { .. } => {
                crate::metrics::requires_review();
                Ok(Vec::new())
            }
        }
    }
}

/// What a round's writes did.
#[derive(Default)]
struct Written {
    applied: HashSet<Uuid>,
    poisoned: HashMap<Uuid, (&'static str, String)>,
}

impl PaymentOrderPspResultApplier {
    /// A result at or below the last applied attempt: a replay re-emits the
    /// finalized event from what was recorded (a DB commit followed by a
    /// Kafka abort must not lose it) and re-queues a recorded retry; a stale
    /// result changes nothing.
    async fn replayed(
        &self,
        envelope: &Envelope,
        result: &PspResultUpdated,
        order: &OrderRow,
    ) -> Decision {
        let attempt = result.attempt as i32;
        if order.final_attempt == Some(attempt) {
            if let Some(status) = FinalStatus::of(order.status) {
                return Ok(vec![finalized_event(
                    envelope,
                    result,
                    status,
                    order.failure_reason.clone(),
                )]);
            }
        }
        if order.next_attempt == Some(attempt + 1) {
            if let Some(due) = order.next_retry_at {
                self.enqueue_retry(envelope, result, due).await?;
            }
        }
        Ok(Vec::new())
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
