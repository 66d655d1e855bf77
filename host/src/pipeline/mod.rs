//! The payment pipeline: one module per seed stage, meeting only on topics.
//!
//! | stage | consumes | produces | key |
//! |---|---|---|---|
//! | outbox_dispatcher | outbox_event rows | payment_order_created_topic | paymentOrderId |
//! | payment_order_enqueuer | payment_order_created_topic | payment_order_psp_call_requested_topic | paymentOrderId |
//! | payment_order_psp_call_executor | payment_order_psp_call_requested_topic | payment_order_psp_result_updated_topic | paymentOrderId |
//! | payment_order_psp_result_applier | payment_order_psp_result_updated_topic | payment_order_finalized_topic or a Redis retry | paymentOrderId |
//! | retry_dispatcher_scheduler | Redis due retries | payment_order_psp_call_requested_topic | paymentOrderId |
//! | ledger_recording_request_dispatcher | payment_order_finalized_topic | ledger_record_request_queue_topic | sellerId |
//! | ledger_recording_consumer | ledger_record_request_queue_topic | ledger_entries_recorded_topic | sellerId |
//! | account_balance_consumer | ledger_entries_recorded_topic | account_balances, Redis cache | sellerId |
//! | refund_executor | refund_requested_topic | refund_finalized_topic or a Redis retry | paymentOrderId |
//! | refund_ledger_recorder | refund_finalized_topic | ledger_entries_recorded_topic | paymentOrderId → sellerId |
//!
//! The refund stages run as many workers as the PSP call executor and the
//! ledger recorder respectively (`stages.psp_call_executor`,
//! `stages.ledger_recording_consumer`).

pub mod account_balance_consumer;
pub mod commit;
pub mod component_call;
pub mod consume;
pub mod decision;
pub mod dlq;
pub mod ledger_recording_consumer;
pub mod ledger_recording_request_dispatcher;
pub mod outbound;
pub mod outbox_dispatcher;
pub mod payment_order_enqueuer;
pub mod payment_order_psp_call_executor;
pub mod payment_order_psp_result_applier;
pub mod refund_executor;
pub mod refund_ledger_recorder;
pub mod refund_review_janitor;
pub mod retry_dispatcher_scheduler;
pub mod retry_sweeper;
pub mod review_janitor;
pub mod stage_loop;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::components::registry::Registry;
use crate::config::Config;
use crate::kafka::Names;
use crate::retry_queue::RetryQueue;
use commit::AbortFailpoint;
use stage_loop::Stage;

/// What every stage may use. Cheap to clone.
#[derive(Clone)]
pub struct PipelineContext {
    pub config: Arc<Config>,
    pub names: Names,
    pub pool: PgPool,
    pub retry_queue: RetryQueue,
    pub redis: redis::aio::ConnectionManager,
    pub registry: Arc<Registry>,
}

/// Starts the configured number of workers of every stage.
pub fn spawn_all(
    ctx: &PipelineContext,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) {
    let stages = &ctx.config.stages;
    let executor_failpoint = Arc::new(AbortFailpoint(
        ctx.config
            .failpoints
            .psp_executor_abort_before_commit
            .into(),
    ));
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.payment_order_enqueuer,
        Arc::new(payment_order_enqueuer::PaymentOrderEnqueuer),
        None,
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.psp_call_executor,
        Arc::new(payment_order_psp_call_executor::PaymentOrderPspCallExecutor::new(ctx.clone())),
        Some(executor_failpoint),
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.psp_result_applier,
        Arc::new(payment_order_psp_result_applier::PaymentOrderPspResultApplier::new(ctx.clone())),
        None,
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.ledger_request_dispatcher,
        Arc::new(ledger_recording_request_dispatcher::LedgerRecordingRequestDispatcher),
        None,
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.ledger_recording_consumer,
        Arc::new(ledger_recording_consumer::LedgerRecordingConsumer::new(
            ctx.clone(),
        )),
        None,
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.account_balance_consumer,
        Arc::new(account_balance_consumer::AccountBalanceConsumer::new(
            ctx.clone(),
        )),
        None,
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.psp_call_executor,
        Arc::new(refund_executor::RefundExecutor::new(ctx.clone())),
        None,
    );
    spawn_stage(
        ctx,
        tasks,
        shutdown,
        stages.ledger_recording_consumer,
        Arc::new(refund_ledger_recorder::RefundLedgerRecorder::new(
            ctx.clone(),
        )),
        None,
    );
    for worker in 0..stages.outbox_dispatcher {
        tasks.spawn(outbox_dispatcher::run(
            ctx.clone(),
            worker,
            shutdown.clone(),
        ));
    }
    if stages.psp_call_executor > 0 {
        tasks.spawn(review_janitor::run(ctx.clone(), shutdown.clone()));
    }
    for worker in 0..stages.retry_scheduler {
        tasks.spawn(retry_dispatcher_scheduler::run(
            ctx.clone(),
            worker,
            shutdown.clone(),
        ));
    }
}

fn spawn_stage<S: Stage>(
    ctx: &PipelineContext,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
    workers: usize,
    stage: Arc<S>,
    failpoint: Option<Arc<AbortFailpoint>>,
) {
    let failpoint = failpoint.unwrap_or_default();
    for worker in 0..workers {
        tasks.spawn(stage_loop::run(
            stage.clone(),
            ctx.clone(),
            worker,
            failpoint.clone(),
            shutdown.clone(),
        ));
    }
}
