//! The one transactional loop every Kafka → Kafka stage runs:
//! consume a batch (`read_committed`) → decide (idempotent DB writes) →
//! produce outputs + `send_offsets_to_transaction` → commit.
//!
//! A batch is bounded by count and time. A retryable failure (database or
//! broker trouble) aborts the whole batch and rewinds the consumer; a poison
//! message goes to `<topic>.DLQ` inside the same transaction and its payment
//! order is parked once that transaction committed. Because every decision
//! is idempotent and every event id deterministic, a replayed batch
//! re-produces the same events and changes nothing else.
//!
//! **Overlap.** A batch's Kafka commit runs on a blocking thread while the
//! loop collects and decides the next batch; the next transaction begins
//! only after the previous one ended. Deciding early is safe because the
//! previous batch's database writes are already committed, and if its Kafka
//! transaction aborts, the consumer rewinds to that batch's first record and
//! both batches are decided again, idempotently (what was already written
//! is re-read and re-emitted, never applied twice).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::events::Envelope;
use crate::kafka;

use super::commit::{AbortFailpoint, Commit, CommitError};
use super::consume::{self, collect, rewind, Inbound, OwnedConsumer, Woken};
use super::decision::{decode, event_span, Decision, Failure};
use super::{dlq, PipelineContext};

/// A Kafka → Kafka stage: decode → decide → encode.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    /// The seed's class name in snake case; names groups and transactional ids.
    fn name(&self) -> &'static str;
    fn input_topic(&self) -> &'static str;
    /// Decides what one event produces. Must be idempotent.
    async fn handle(&self, envelope: &Envelope) -> Decision;

    /// Decides a whole batch; by default events of one key in order, keys
    /// concurrently. Stages that aggregate (balances) override this.
    async fn handle_batch(&self, batch: &[Inbound], concurrency: usize) -> Vec<Decision> {
        let mut by_key: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (index, record) in batch.iter().enumerate() {
            by_key.entry(record.key.clone()).or_default().push(index);
        }
        let groups = futures::stream::iter(by_key.into_values().map(|indexes| async move {
            let mut decided = Vec::with_capacity(indexes.len());
            for index in indexes {
                let decision = match decode(&batch[index]) {
                    Ok(envelope) => {
                        let span = event_span(self.name(), &envelope);
                        self.handle(&envelope).instrument(span).await
                    }
                    Err(failure) => Err(failure),
                };
                decided.push((index, decision));
            }
            decided
        }))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
        let mut results: Vec<Option<Decision>> = (0..batch.len()).map(|_| None).collect();
        for (index, decision) in groups.into_iter().flatten() {
            results[index] = Some(decision);
        }
        results
            .into_iter()
            .map(|d| d.expect("every record decided"))
            .collect()
    }
}

/// How long a worker with nothing to do waits before it commits its
/// position past trailing transaction markers.
const IDLE: Duration = Duration::from_secs(2);

type CommitResult = Result<Result<Vec<dlq::Parking>, CommitError>, tokio::task::JoinError>;

/// A batch whose Kafka commit is running.
struct InFlight {
    batch: Arc<Vec<Inbound>>,
    started: Instant,
    commit: JoinHandle<Result<Vec<dlq::Parking>, CommitError>>,
}

/// One worker's Kafka clients. The consumer is rebuilt when a rewind is not
/// possible; the transactional producer when it became unusable.
struct Worker<S: Stage> {
    stage: Arc<S>,
    ctx: PipelineContext,
    group: String,
    member: String,
    input: String,
    txid: String,
    consumer: OwnedConsumer,
    revoked: Arc<AtomicBool>,
    producer: Arc<FutureProducer>,
    failpoint: Arc<AbortFailpoint>,
}

impl<S: Stage> Worker<S> {
    async fn new(
        stage: Arc<S>,
        ctx: PipelineContext,
        worker: usize,
        failpoint: Arc<AbortFailpoint>,
    ) -> anyhow::Result<Self> {
        let names = &ctx.names;
        let input = names.topic(stage.input_topic());
        let group = names.group(stage.name());
        let txid = names.transactional_id(stage.name(), &ctx.config.stages.instance_id, worker);
        let producer =
            Arc::new(kafka::producer_for_this_life(&ctx.config.kafka, &ctx.pool, &txid).await?);
        // The static member id is the transactional id's stable base: this
        // worker's identity across restarts.
        let member = txid.clone();
        let consumer = consume::consumer(&ctx, &group, &member, std::slice::from_ref(&input))?;
        Ok(Worker {
            revoked: consumer.context().revoked(),
            consumer: OwnedConsumer::new(consumer),
            stage,
            ctx,
            group,
            member,
            input,
            txid,
            producer,
            failpoint,
        })
    }

    /// A fresh consumer resumes from the group's committed offsets. Both use
    /// this worker's static member id: the new one is created (its join
    /// takes the member over) and then the old one is closed, awaited, as
    /// the worker always did; only the close moved off the runtime. (Closing
    /// the old one first, which avoids the overlap on paper, left a
    /// rebalanced order unconsumed on noida-db in one CI run of three.)
    async fn rebuild_consumer(&mut self) -> anyhow::Result<()> {
        let consumer = consume::consumer(
            &self.ctx,
            &self.group,
            &self.member,
            std::slice::from_ref(&self.input),
        )?;
        self.revoked = consumer.context().revoked();
        let mut old = std::mem::replace(&mut self.consumer, OwnedConsumer::new(consumer));
        old.close(self.stage.name()).await;
        Ok(())
    }

    /// A new transactional producer for a new life of this worker (see
    /// `transaction::reinit`); at shutdown the old one stays (the loop stops
    /// before using it).
    async fn replace_producer(&mut self, shutdown: &CancellationToken) {
        let (kafka, pool) = (&self.ctx.config.kafka, &self.ctx.pool);
        if let Some(producer) = kafka::transaction::reinit(kafka, pool, &self.txid, shutdown).await
        {
            self.producer = Arc::new(producer);
        }
    }

    /// Moves the consumer back to the batch's first records, or rebuilds it.
    async fn rewind(&mut self, batch: &[Inbound]) -> anyhow::Result<()> {
        if rewind(&self.consumer, batch) {
            return Ok(());
        }
        self.rebuild_consumer().await
    }

    /// Idle, nothing in flight: every record this consumer returned is
    /// committed (or was rewound), so where its position lies past the
    /// group's committed offset, only transaction markers lie between (a
    /// batch's offsets end at its last record; the upstream commit marker
    /// follows it). Committing the position there makes the group's lag 0
    /// at rest instead of one marker per partition. Best effort: a failure
    /// changes nothing but the lag figure.
    fn commit_past_markers(&self) {
        if self.revoked.load(Ordering::SeqCst) {
            return;
        }
        let Ok(position) = self.consumer.position() else {
            return;
        };
        let committed = tokio::task::block_in_place(|| {
            self.consumer
                .committed_offsets(position.clone(), Duration::from_secs(2))
        });
        let Ok(committed) = committed else { return };
        let mut ahead = rdkafka::TopicPartitionList::new();
        for element in position.elements() {
            let (Some(at), Some(done)) = (
                element.offset().to_raw().filter(|o| *o >= 0),
                committed
                    .find_partition(element.topic(), element.partition())
                    .and_then(|c| c.offset().to_raw()),
            ) else {
                continue;
            };
            if at > done && done >= 0 {
                let _ = ahead.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    rdkafka::Offset::Offset(at),
                );
            }
        }
        if ahead.count() > 0 {
            if let Err(error) = self.consumer.commit(&ahead, CommitMode::Async) {
                tracing::debug!(%error, "commit past markers failed");
            }
        }
    }

    fn start_commit(
        &self,
        batch: Vec<Inbound>,
        decisions: Vec<Decision>,
        started: Instant,
    ) -> InFlight {
        let batch = Arc::new(batch);
        let commit = Commit {
            stage: self.stage.name(),
            input_topic: self.stage.input_topic(),
            names: self.ctx.names.clone(),
            consumer: self.consumer.shared(),
            producer: self.producer.clone(),
            revoked: self.revoked.clone(),
            failpoint: self.failpoint.clone(),
            batch: batch.clone(),
            decisions,
        };
        InFlight {
            batch,
            started,
            commit: tokio::task::spawn_blocking(move || commit.run()),
        }
    }

    /// Handles a finished commit. `Ok(false)`: it aborted and the consumer
    /// is back at its first record (anything read after it is read again).
    async fn settle(
        &mut self,
        done: InFlight,
        result: CommitResult,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let name = self.stage.name();
        let records = done.batch.len();
        match result {
            Ok(Ok(parkings)) => {
                // Parked only once its DLQ record is committed: an aborted
                // transaction must not leave a PARKED order without one.
                dlq::park_all(&self.ctx.pool, name, parkings, shutdown).await;
                crate::metrics::stage_batch(name, "committed", records, done.started);
                Ok(true)
            }
            Ok(Err(CommitError::Aborted(reason))) => {
                tracing::warn!(stage = name, %reason, "transaction aborted; rewinding");
                crate::metrics::stage_batch(name, "aborted", records, done.started);
                if shutdown.is_cancelled() {
                    // Stopping: the next life resumes from the committed
                    // offsets; a new consumer now would only join to leave.
                    return Ok(false);
                }
                // After a revocation the positions are the group's business:
                // a fresh consumer resumes from the committed offsets, which
                // a seek on a half-reassigned partition cannot guarantee.
                if self.revoked.load(Ordering::SeqCst) {
                    self.rebuild_consumer().await?;
                } else {
                    self.rewind(&done.batch).await?;
                }
                Ok(false)
            }
            Ok(Err(CommitError::Fatal(error))) => {
                crate::metrics::stage_batch(name, "fatal", records, done.started);
                tracing::error!(stage = name, error = %format!("{error:#}"), "producer unusable; re-initialising it");
                self.replace_producer(shutdown).await;
                if shutdown.is_cancelled() {
                    return Ok(false);
                }
                // Whether the broker kept the transaction is unknown: the
                // group's committed offsets say where to resume.
                self.rebuild_consumer().await?;
                Ok(false)
            }
            Err(panicked) => {
                crate::metrics::stage_batch(name, "fatal", records, done.started);
                Err(anyhow::anyhow!("batch commit panicked: {panicked}"))
            }
        }
    }
}

/// Runs one worker of `stage` until shutdown. Returns an error only when the
/// worker cannot continue (fenced producer, broken consumer).
pub async fn run<S: Stage>(
    stage: Arc<S>,
    ctx: PipelineContext,
    worker: usize,
    failpoint: Arc<AbortFailpoint>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut w = Worker::new(stage.clone(), ctx, worker, failpoint).await?;
    tracing::info!(stage = stage.name(), worker, input = %w.input, "stage worker started");
    let result = w.work(&shutdown).await;
    // On every way out: a restarted worker joins under the same member id.
    w.consumer.close(stage.name()).await;
    tracing::info!(stage = stage.name(), worker, "stage worker stopped");
    result
}

impl<S: Stage> Worker<S> {
    /// Reads, decides and commits batches until shutdown; one commit runs
    /// while the next batch is decided.
    async fn work(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let kafka = self.ctx.config.kafka.clone();
        let concurrency = self.ctx.config.stages.per_batch_concurrency;
        let wait = Duration::from_millis(kafka.batch_max_wait_ms);
        let mut in_flight: Option<InFlight> = None;
        let mut backoff = Duration::from_millis(100);

        loop {
            if in_flight.is_none() {
                // Nothing open: a revocation before this batch concerns no one.
                self.revoked.store(false, Ordering::SeqCst);
            }
            // With a commit in flight, its end wakes the loop; with none, a
            // quiet spell does (to commit past trailing transaction markers).
            let previous = async {
                match in_flight.as_mut() {
                    Some(open) => Some((&mut open.commit).await),
                    None => {
                        tokio::time::sleep(IDLE).await;
                        None
                    }
                }
            };
            let batch = match collect(
                &self.consumer,
                kafka.batch_max_records,
                wait,
                shutdown,
                previous,
            )
            .await
            {
                Woken::Batch(batch) => batch,
                Woken::Other(Some(result)) => {
                    let done = in_flight.take().expect("a commit was in flight");
                    self.settle(done, result, shutdown).await?;
                    continue;
                }
                Woken::Other(None) => {
                    self.commit_past_markers();
                    continue;
                }
                Woken::Shutdown => break,
            };
            if batch.is_empty() {
                continue;
            }
            let started = Instant::now();
            let decisions = self.stage.handle_batch(&batch, concurrency).await;
            if let Some(mut open) = in_flight.take() {
                let result = (&mut open.commit).await;
                if !self.settle(open, result, shutdown).await? {
                    // Rewound to the aborted batch: this one is read again.
                    continue;
                }
            }
            if let Some(error) = first_retryable(&decisions) {
                tracing::warn!(stage = self.stage.name(), error = %format!("{error:#}"), "batch failed; rewinding");
                crate::metrics::stage_batch(self.stage.name(), "retry", batch.len(), started);
                self.rewind(&batch).await?;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            backoff = Duration::from_millis(100);
            in_flight = Some(self.start_commit(batch, decisions, started));
        }
        if let Some(mut open) = in_flight.take() {
            let result = (&mut open.commit).await;
            self.settle(open, result, shutdown).await?;
        }
        Ok(())
    }
}

fn first_retryable(decisions: &[Decision]) -> Option<&anyhow::Error> {
    decisions.iter().find_map(|d| match d {
        Err(Failure::Retryable(error)) => Some(error),
        _ => None,
    })
}
