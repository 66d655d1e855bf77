//! PaymentOrderPspCallExecutor.
//!
//! - consumes `payment_order_psp_call_requested_topic` (key paymentOrderId)
//! - produces `payment_order_psp_result_updated_topic` (key paymentOrderId),
//!   header `componentSha256` = the adapter that decided
//! - idempotency: the `psp_attempts` row (order, attempt) is inserted *before*
//!   the PSP call, in the same database transaction as the adapter pin. A
//!   redelivery finds it: with an outcome, the same result event is
//!   re-produced without calling anything; without one (a crash mid-call),
//!   the charge may have happened, so only `status` is asked, never `charge`.
//! - the adapter *activation* (component + config) is pinned per order at
//!   its first call and only `dlq replay` re-pins; the PSP idempotency key is
//!   the order's, identical for every attempt
//! - a claim is a lease: a second holder waits for it to expire before it
//!   settles the attempt by `status`, so a holder still mid-charge is never
//!   second-guessed
//! - a component failure after a request left is `unknown` (settled by
//!   `status`), never a DLQ
//! - DLQ: undecodable or inconsistent events; a failing adapter component
//!   (trap, timeout, memory) parks the order with its claim open

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tracing::Instrument;
use uuid::Uuid;

use super::component_call::psp_answer;
use super::consume::Inbound;
use super::decision::{bounded, decode, event_span, rounds, Decision, Decisions, Failure};
use super::outbound::Outbound;
use super::stage_loop::Stage;
use super::PipelineContext;
use crate::components::bindings::adapter::paynode::psp_adapter::types as wit;
use crate::components::registry::Active;
use crate::components::Slot;
use crate::domain::events::{event_type, Envelope, PspCallRequested, PspResultUpdated};
use crate::domain::payment::{OutcomeKind, PspOutcome, Transition};
use crate::kafka::{header, topic};
use crate::store::attempts::{self, Claim, ClaimRequest, Claimant, Finish};
use crate::store::orders::{self, Pin};
use crate::store::payments::{AttemptRow, OrderRow};

/// How often a claim held elsewhere is re-read for its outcome.
const CLAIM_POLL: Duration = Duration::from_millis(200);

pub struct PaymentOrderPspCallExecutor {
    ctx: PipelineContext,
    /// `instance#boot`: names this process's claims, so after a restart the
    /// node knows its own earlier claims are orphaned (nobody is mid-call).
    holder: String,
    /// How many rounds of this process hold each attempt (from its claim
    /// until its outcome is written). A claim of ours that no other round
    /// holds is orphaned: its call ended but its outcome was never written
    /// (the database went away mid-round), and waiting out our own lease
    /// would stall the stage for `psp.claim_lease_ms`.
    in_rounds: Mutex<HashMap<(Uuid, i32), u32>>,
}

/// Holds a round's attempts in `in_rounds` until dropped.
struct InRound<'a> {
    held: &'a Mutex<HashMap<(Uuid, i32), u32>>,
    attempts: Vec<(Uuid, i32)>,
}

impl Drop for InRound<'_> {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("in_rounds");
        for key in &self.attempts {
            if let Some(count) = held.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(key);
                }
            }
        }
    }
}

/// One decoded call request.
struct Item {
    envelope: Envelope,
    request: PspCallRequested,
}

/// A claimed attempt, ready for the PSP.
struct Call<'a> {
    index: usize,
    item: &'a Item,
    order: OrderRow,
    adapter: Arc<Active>,
    claim: Claim,
}

/// A finished call: the record's index, its request, what the call gave.
type CallDone<'a> = (usize, &'a Item, Result<Called, Failure>);

/// What calling the PSP for one claim gave.
enum Called {
    /// The attempt already had an outcome (a replay): re-emit it.
    Recorded(AttemptRow),
    /// A new outcome to record.
    Fresh(Finish, Arc<Active>),
}

impl PaymentOrderPspCallExecutor {
    pub fn new(ctx: PipelineContext) -> Self {
        let holder = format!(
            "{}#{}",
            ctx.config.stages.instance_id,
            Uuid::new_v4().simple()
        );
        PaymentOrderPspCallExecutor {
            ctx,
            holder,
            in_rounds: Mutex::default(),
        }
    }

    fn claimant(&self) -> Claimant<'_> {
        Claimant {
            node_id: &self.holder,
            lease: Duration::from_millis(self.ctx.config.psp.claim_lease_ms),
        }
    }

    fn decode_item(&self, record: &Inbound) -> Result<Item, Failure> {
        let envelope = decode(record)?;
        let request: PspCallRequested = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad PaymentOrderPspCallRequested: {e}"),
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
        Ok(Item { envelope, request })
    }

    /// One round (each order at most once): claims in one transaction,
    /// PSP calls concurrently, outcomes recorded in one statement.
    async fn round(
        &self,
        round: &[&(usize, Item)],
        concurrency: usize,
    ) -> anyhow::Result<Vec<(usize, Decision)>> {
        let _held = self.enter_round(round);
        let (mut decided, calls) = self.prepare(round).await?;
        let mut futures: Vec<BoxFuture<'_, CallDone<'_>>> = Vec::with_capacity(calls.len());
        for call in calls {
            let span = event_span(self.name(), &call.item.envelope);
            futures.push(Box::pin(
                async move {
                    let (index, item) = (call.index, call.item);
                    (index, item, self.call(call).await)
                }
                .instrument(span),
            ));
        }
        let called = bounded(futures, concurrency).await;
        let finishes: Vec<&Finish> = called
            .iter()
            .filter_map(|(_, _, c)| match c {
                Ok(Called::Fresh(finish, _)) => Some(finish),
                _ => None,
            })
            .collect();
        let recorded = attempts::finish_all(&self.ctx.pool, &finishes).await?;
        for (index, item, result) in called {
            let (envelope, request) = (&item.envelope, &item.request);
            let decision = result.and_then(|called| {
                let row = match called {
                    Called::Recorded(row) => row,
                    Called::Fresh(finish, adapter) => {
                        let key = (finish.payment_order_id, finish.attempt);
                        let row = recorded.get(&key).cloned().ok_or_else(|| {
                            Failure::Retryable(anyhow::anyhow!("attempt {key:?} vanished"))
                        })?;
                        tracing::info!(attempt = finish.attempt, outcome = ?row.outcome, latency_ms = finish.latency_ms, component = %adapter.loaded.name, "PSP call done");
                        row
                    }
                };
                let outcome = from_row(&row).ok_or_else(|| {
                    Failure::Retryable(anyhow::anyhow!("attempt without an outcome"))
                })?;
                Ok(vec![result_event(envelope, request, outcome, &row)])
            });
            decided.push((index, decision));
        }
        Ok(decided)
    }

    /// In one database transaction, before any PSP call: pins each order's
    /// activation (first call only), checks each request against its order,
    /// and claims the attempts. One commit makes the claims durable.
    async fn prepare<'a>(
        &self,
        round: &[&'a (usize, Item)],
    ) -> anyhow::Result<(Vec<(usize, Decision)>, Vec<Call<'a>>)> {
        let active = match self.ctx.registry.active(Slot::PspAdapter) {
            Ok(active) => active,
            Err(error) => anyhow::bail!("{error}"),
        };
        let pin = Pin {
            sha256: active.loaded.sha256.clone(),
            activation_id: active.activation_id,
        };
        let ids: Vec<Uuid> = round
            .iter()
            .map(|(_, item)| item.request.order.payment_order_id)
            .collect();
        let mut tx = self.ctx.pool.begin().await?;
        let prepared = self.claim_round(&mut tx, round, &ids, &pin).await;
        // End the transaction on every path: a dropped sqlx transaction
        // keeps its row locks until its connection is reused.
        match prepared {
            Ok(prepared) => {
                tx.commit().await?;
                Ok(prepared)
            }
            Err(error) => {
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    async fn claim_round<'a>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        round: &[&'a (usize, Item)],
        ids: &[Uuid],
        pin: &Pin,
    ) -> anyhow::Result<(Vec<(usize, Decision)>, Vec<Call<'a>>)> {
        let mut orders = orders::start_psp_calls(tx, ids, pin).await?;
        let mut decided = Vec::new();
        let mut wanted = Vec::new();
        for (index, item) in round.iter().map(|entry| (entry.0, &entry.1)) {
            match self
                .check(item, orders.remove(&item.request.order.payment_order_id))
                .await
            {
                Ok(Some((order, adapter))) => wanted.push((index, item, order, adapter)),
                Ok(None) => decided.push((index, Ok(Vec::new()))),
                Err(failure) => decided.push((index, Err(failure))),
            }
        }
        let requests: Vec<ClaimRequest> = wanted
            .iter()
            .map(|(_, item, order, adapter)| {
                (
                    order.payment_order_id,
                    item.request.attempt as i32,
                    order.psp_idempotency_key.clone(),
                    adapter.loaded.sha256.clone(),
                    item.envelope.trace_id.clone(),
                )
            })
            .collect();
        let mut claims = attempts::claim_all(tx, &requests, &self.claimant()).await?;
        let due: Vec<(Uuid, i32)> = requests.iter().map(|r| (r.0, r.1)).collect();
        orders::clear_due_retries(tx, &due).await?;
        let calls = wanted
            .into_iter()
            .map(|(index, item, order, adapter)| {
                let key = (order.payment_order_id, item.request.attempt as i32);
                let claim = claims.remove(&key).expect("claimed or found");
                Call {
                    index,
                    item,
                    order,
                    adapter,
                    claim,
                }
            })
            .collect();
        Ok((decided, calls))
    }

    /// The request against its order: None when stale (order settled,
    /// parked or in review, or not exactly the next attempt), else the
    /// order and its pinned activation.
    async fn check(
        &self,
        item: &Item,
        order: Option<OrderRow>,
    ) -> Result<Option<(OrderRow, Arc<Active>)>, Failure> {
        let request = &item.request;
        let order_id = request.order.payment_order_id;
        let order = order.ok_or_else(|| Failure::Poison {
            class: "invalid_event",
            message: format!("unknown payment order {order_id}"),
        })?;
        if order.amount_minor != request.order.amount.quantity
            || order.seller_id != request.order.seller_id
        {
            return Err(Failure::Poison {
                class: "invalid_event",
                message: "event disagrees with the stored payment order".into(),
            });
        }
        let attempt = request.attempt as i32;
        if !order.status.allows(Transition::StartPspCall)
            || attempt != order.last_applied_attempt + 1
        {
            tracing::info!(%order_id, attempt, status = order.status.as_str(), last_applied = order.last_applied_attempt, "stale PSP call request ignored");
            return Ok(None);
        }
        let activation_id = order.adapter_activation_id.ok_or_else(|| Failure::Poison {
            class: "invariant_broken",
            message: format!("order {order_id} has no pinned adapter activation"),
        })?;
        let adapter = self
            .ctx
            .registry
            .activation(Slot::PspAdapter, activation_id)
            .await
            .map_err(Failure::from)?;
        Ok(Some((order, adapter)))
    }

    /// Calls the PSP for one claimed attempt (only `status` when an earlier
    /// holder may have charged).
    async fn call(&self, call: Call<'_>) -> Result<Called, Failure> {
        let trace_id = &call.item.envelope.trace_id;
        let may_have_charged = match call.claim {
            Claim::New => false,
            Claim::Existing(row) => {
                let row = self.await_claim(*row).await?;
                if row.outcome.is_some() {
                    return Ok(Called::Recorded(row));
                }
                true
            }
        };
        let (order_id, attempt) = (call.order.payment_order_id, call.item.request.attempt);
        let started = Instant::now();
        let charge = charge_request(&call.order, attempt);
        let adapter = &call.adapter;
        match self
            .call_psp(adapter, &charge, may_have_charged, trace_id)
            .await
        {
            Ok((outcome, settled, calls)) => {
                crate::metrics::psp_call(outcome.kind.as_str(), started);
                let finish = Finish {
                    payment_order_id: order_id,
                    attempt: attempt as i32,
                    outcome,
                    latency_ms: started.elapsed().as_millis() as i64,
                    settled_by_status: settled,
                    component_calls: calls,
                };
                Ok(Called::Fresh(finish, call.adapter))
            }
            Err(failure) => {
                // The component failed before any request left: nobody is
                // mid-charge, so `dlq replay` need not wait out the lease.
                attempts::release(&self.ctx.pool, order_id, attempt as i32, &self.holder).await?;
                Err(failure)
            }
        }
    }

    fn enter_round(&self, round: &[&(usize, Item)]) -> InRound<'_> {
        let attempts: Vec<(Uuid, i32)> = round
            .iter()
            .map(|(_, item)| {
                (
                    item.request.order.payment_order_id,
                    item.request.attempt as i32,
                )
            })
            .collect();
        let mut held = self.in_rounds.lock().expect("in_rounds");
        for key in &attempts {
            *held.entry(*key).or_default() += 1;
        }
        InRound {
            held: &self.in_rounds,
            attempts,
        }
    }

    /// Whether a round other than the asking one holds this attempt.
    fn held_by_another_round(&self, order_id: Uuid, attempt: i32) -> bool {
        let held = self.in_rounds.lock().expect("in_rounds");
        held.get(&(order_id, attempt))
            .is_some_and(|count| *count > 1)
    }

    /// An open claim of another holder: it may be mid-charge, so wait for
    /// its lease to run out (a claim of this node's earlier life is
    /// orphaned at once), then take it over, unless its outcome arrives.
    /// The claim is re-read every `CLAIM_POLL` while it is waited for: after
    /// a rebalance the first holder usually records its outcome within
    /// milliseconds, and sleeping out a whole lease (minutes) would hold
    /// this batch and every order behind it.
    async fn await_claim(&self, mut row: AttemptRow) -> Result<AttemptRow, Failure> {
        let (order_id, attempt) = (row.payment_order_id, row.attempt);
        let instance = format!("{}#", self.ctx.config.stages.instance_id);
        let mut logged = false;
        loop {
            if row.outcome.is_some() {
                return Ok(row);
            }
            let orphaned = if row.node_id == self.holder {
                !self.held_by_another_round(order_id, attempt)
            } else {
                row.node_id.starts_with(&instance)
            };
            let wait = (row.lease_until - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            if !orphaned && !wait.is_zero() {
                if !logged {
                    tracing::info!(%order_id, attempt, holder = %row.node_id, lease_left_ms = wait.as_millis() as u64, "attempt claimed elsewhere; waiting for its outcome or its lease");
                    logged = true;
                }
                tokio::time::sleep(wait.min(CLAIM_POLL)).await;
                row = attempts::get(&self.ctx.pool, order_id, attempt).await?;
                continue;
            }
            let claimant = self.claimant();
            if let Some(taken) =
                attempts::take_over(&self.ctx.pool, order_id, attempt, &claimant, orphaned).await?
            {
                return Ok(taken);
            }
            row = attempts::get(&self.ctx.pool, order_id, attempt).await?;
        }
    }

    /// Calls `charge` (or only `status` when a previous call may have
    /// charged), then asks `status` to settle an unknown outcome.
    async fn call_psp(
        &self,
        active: &Active,
        request: &wit::ChargeRequest,
        may_have_charged: bool,
        trace_id: &str,
    ) -> Result<(PspOutcome, bool, i32), Failure> {
        let runtime = self.ctx.registry.runtime();
        // The pinned activation's egress policy, whatever is active now.
        let env = self.ctx.registry.adapter_env(active, trace_id);
        let (adapter, config) = (&active.loaded, &active.config);
        let mut calls = 0;
        let mut outcome = if may_have_charged {
            wit::Outcome::Unknown("previous call did not record an outcome".into())
        } else {
            calls += 1;
            let started = Instant::now();
            let result = runtime.charge(adapter, &env, config, request).await;
            psp_answer(started, result)?
        };
        let mut settled_by_status = false;
        let psp = &self.ctx.config.psp;
        for check in 0..psp.status_checks {
            if !matches!(outcome, wit::Outcome::Unknown(_)) {
                break;
            }
            if check > 0 || !may_have_charged {
                tokio::time::sleep(Duration::from_millis(psp.status_check_delay_ms)).await;
            }
            calls += 1;
            let started = Instant::now();
            let result = runtime.status(adapter, &env, config, request).await;
            crate::metrics::component_call(
                Slot::PspAdapter.as_str(),
                started,
                result.as_ref().err(),
            );
            match result {
                Ok((answer, _)) => {
                    settled_by_status = !matches!(answer, wit::Outcome::Unknown(_));
                    outcome = answer;
                }
                Err(error) => tracing::warn!(%error, "status query failed"),
            }
        }
        Ok((to_domain(outcome), settled_by_status, calls))
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

fn from_row(row: &AttemptRow) -> Option<PspOutcome> {
    Some(PspOutcome {
        kind: OutcomeKind::parse(row.outcome.as_deref()?)?,
        code: row.code.clone(),
        message: row.message.clone(),
        psp_reference: row.psp_reference.clone(),
    })
}

pub(super) fn charge_request(order: &OrderRow, attempt: u32) -> wit::ChargeRequest {
    wit::ChargeRequest {
        payment_order_id: order.payment_order_id.to_string(),
        payment_id: order.payment_id.to_string(),
        seller_id: order.seller_id.clone(),
        amount: wit::Money {
            quantity: order.amount_minor,
            currency: order.currency.clone(),
        },
        attempt,
        idempotency_key: order.psp_idempotency_key.clone(),
    }
}

fn result_event(
    envelope: &Envelope,
    request: &PspCallRequested,
    outcome: PspOutcome,
    row: &AttemptRow,
) -> Outbound {
    let (latency_ms, sha, settled) = (
        row.latency_ms.unwrap_or(0),
        row.component_sha256.as_str(),
        row.settled_by_status,
    );
    let key = request.order.payment_order_id.to_string();
    let result = PspResultUpdated {
        order: request.order.clone(),
        attempt: request.attempt,
        outcome,
        latency_ms: latency_ms.max(0) as u64,
        component_sha256: sha.to_string(),
        settled_by_status: settled,
    };
    let event = envelope.child(
        event_type::PSP_RESULT_UPDATED,
        &key,
        request.attempt,
        &result,
    );
    let mut out = Outbound::new(topic::PSP_RESULT_UPDATED, key, event);
    out.headers
        .push((header::COMPONENT_SHA256, sha.to_string()));
    out
}

#[async_trait]
impl Stage for PaymentOrderPspCallExecutor {
    fn name(&self) -> &'static str {
        "payment_order_psp_call_executor"
    }

    fn input_topic(&self) -> &'static str {
        topic::PSP_CALL_REQUESTED
    }

    async fn handle(&self, _envelope: &Envelope) -> Decision {
        unreachable!("handle_batch is overridden")
    }

    async fn handle_batch(&self, batch: &[Inbound], concurrency: usize) -> Vec<Decision> {
        let (mut decisions, items) = Decisions::decode(batch, |r| self.decode_item(r));
        for round in rounds(&items, |item| item.request.order.payment_order_id) {
            let round: Vec<&(usize, Item)> = round.into_iter().map(|i| &items[i]).collect();
            match self.round(&round, concurrency).await {
                Ok(decided) => decisions.extend(decided),
                Err(error) => return Failure::retry_all(batch.len(), &error),
            }
        }
        decisions.into_vec()
    }
}
