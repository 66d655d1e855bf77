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
//! - the adapter version is pinned per order at its first call; the PSP
//!   idempotency key is the order's, identical for every attempt
//! - DLQ: undecodable or inconsistent events; a failing adapter component
//!   (trap, timeout, memory) parks the order with its claim open

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::stage_loop::{Decision, Failure, Outbound, Stage};
use super::PipelineContext;
use crate::components::bindings::adapter::paynode::psp_adapter::types as wit;
use crate::components::{Loaded, Slot};
use crate::domain::events::{event_type, Envelope, PspCallRequested, PspResultUpdated};
use crate::domain::payment::{OrderStatus, OutcomeKind, PspOutcome};
use crate::kafka::{header, topic};
use crate::store::attempts::{self, Claim};
use crate::store::orders;
use crate::store::payments::{AttemptRow, OrderRow};

pub struct PaymentOrderPspCallExecutor {
    ctx: PipelineContext,
}

/// What `prepare` settled for one call request.
struct Prepared {
    order: OrderRow,
    adapter: std::sync::Arc<Loaded>,
    config: Vec<(String, String)>,
    /// None: the request is stale (order final, in review, or attempt applied).
    claim: Option<Claim>,
}

impl PaymentOrderPspCallExecutor {
    pub fn new(ctx: PipelineContext) -> Self {
        PaymentOrderPspCallExecutor { ctx }
    }

    /// In one database transaction, before any PSP call: pins the adapter,
    /// checks the request against the stored order, and claims the attempt
    /// (None for a stale request). One commit makes the claim durable.
    async fn prepare(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        envelope: &Envelope,
        request: &PspCallRequested,
    ) -> Result<Prepared, Failure> {
        let active = self
            .ctx
            .registry
            .active(Slot::PspAdapter)
            .map_err(Failure::from)?;
        let order_id = request.order.payment_order_id;
        let order = orders::pin_adapter(tx, order_id, &active.loaded.sha256)
            .await?
            .ok_or_else(|| Failure::Poison {
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
        let pinned = order
            .adapter_sha256
            .clone()
            .unwrap_or_else(|| active.loaded.sha256.clone());
        let adapter = if pinned == active.loaded.sha256 {
            active.loaded.clone()
        } else {
            self.ctx
                .registry
                .by_sha(Slot::PspAdapter, &pinned)
                .await
                .map_err(Failure::from)?
        };
        let attempt = request.attempt as i32;
        let status = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::Pending);
        let stale = status.is_final()
            || status == OrderStatus::RequiresReview
            || attempt <= order.last_applied_attempt;
        let claim = if stale {
            None
        } else {
            let claim = attempts::claim(
                tx,
                order_id,
                attempt,
                &order.psp_idempotency_key,
                &adapter.sha256,
                &envelope.trace_id,
                &self.ctx.config.stages.instance_id,
            )
            .await?;
            if order.next_attempt == Some(attempt) {
                orders::clear_due_retry(tx, order_id, attempt).await?;
            }
            Some(claim)
        };
        Ok(Prepared {
            order,
            adapter,
            config: active.config.clone(),
            claim,
        })
    }

    /// Calls `charge` (or only `status` when a previous call may have
    /// charged), then asks `status` to settle an unknown outcome.
    async fn call_psp(
        &self,
        adapter: &Loaded,
        config: &[(String, String)],
        request: &wit::ChargeRequest,
        may_have_charged: bool,
        trace_id: &str,
    ) -> Result<(PspOutcome, bool, i32), Failure> {
        let runtime = self.ctx.registry.runtime();
        let env = self.ctx.registry.env(Slot::PspAdapter, trace_id);
        let mut calls = 0;
        let mut outcome = if may_have_charged {
            wit::Outcome::Unknown("previous call did not record an outcome".into())
        } else {
            calls += 1;
            let started = Instant::now();
            let result = runtime.charge(adapter, &env, config, request).await;
            crate::metrics::component_call(
                Slot::PspAdapter.as_str(),
                started,
                result.as_ref().err(),
            );
            result.map_err(Failure::from)?.0
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

fn charge_request(order: &OrderRow, attempt: u32) -> wit::ChargeRequest {
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
    latency_ms: i64,
    sha: &str,
    settled: bool,
) -> Outbound {
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

    async fn handle(&self, envelope: &Envelope) -> Decision {
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
        let mut tx = self.ctx.pool.begin().await?;
        let prepared = self.prepare(&mut tx, envelope, &request).await;
        // End the transaction on every path: a dropped sqlx transaction keeps
        // its row lock until its connection is reused.
        let Prepared {
            order,
            adapter,
            config,
            claim,
        } = match prepared {
            Ok(prepared) => {
                tx.commit().await?;
                prepared
            }
            Err(failure) => {
                let _ = tx.rollback().await;
                return Err(failure);
            }
        };
        let order_id = order.payment_order_id;
        let attempt = request.attempt as i32;
        let may_have_charged = match claim {
            None => {
                tracing::info!(attempt, status = %order.status, "stale PSP call request ignored");
                return Ok(Vec::new());
            }
            Some(Claim::Existing(row)) => {
                if let Some(outcome) = from_row(&row) {
                    // Replay: same result event, no PSP call.
                    let latency = row.latency_ms.unwrap_or(0);
                    return Ok(vec![result_event(
                        envelope,
                        &request,
                        outcome,
                        latency,
                        &row.component_sha256,
                        row.settled_by_status,
                    )]);
                }
                true
            }
            Some(Claim::New) => false,
        };
        let started = Instant::now();
        let charge = charge_request(&order, request.attempt);
        let (outcome, settled, calls) = self
            .call_psp(
                &adapter,
                &config,
                &charge,
                may_have_charged,
                &envelope.trace_id,
            )
            .await?;
        let latency_ms = started.elapsed().as_millis() as i64;
        crate::metrics::psp_call(outcome.kind.as_str(), started);
        let row = attempts::finish(
            &self.ctx.pool,
            order_id,
            attempt,
            &outcome,
            latency_ms,
            settled,
            calls,
        )
        .await?;
        let recorded = from_row(&row).unwrap_or(outcome);
        tracing::info!(attempt, outcome = recorded.kind.as_str(), latency_ms, component = %adapter.name, "PSP call done");
        Ok(vec![result_event(
            envelope,
            &request,
            recorded,
            latency_ms,
            &row.component_sha256,
            row.settled_by_status,
        )])
    }
}
