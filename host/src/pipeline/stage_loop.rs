//! The one transactional loop every Kafka → Kafka stage runs:
//! consume a batch (`read_committed`) → decide (idempotent DB writes) →
//! produce outputs + `send_offsets_to_transaction` → commit.
//!
//! A batch is bounded by count and time. A retryable failure (database or
//! broker trouble) aborts the whole batch and rewinds the consumer; a poison
//! message goes to `<topic>.DLQ` inside the same transaction and its payment
//! order is parked. A batch that produces nothing commits its offsets with a
//! plain consumer commit: there is nothing to make atomic. Because every
//! decision is idempotent and every event id deterministic, a replayed batch
//! re-produces the same events and changes nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::events::Envelope;
use crate::kafka::transaction::{self, Offsets, TxnError};
use crate::kafka::{self, header, Names};

use super::{dlq, PipelineContext};

/// One consumed record.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// One record to produce; `topic` is the logical (unprefixed) name.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub topic: &'static str,
    pub key: String,
    pub envelope: Envelope,
    pub headers: Vec<(&'static str, String)>,
}

impl Outbound {
    pub fn new(topic: &'static str, key: impl Into<String>, envelope: Envelope) -> Self {
        Outbound {
            topic,
            key: key.into(),
            envelope,
            headers: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub enum Failure {
    /// Can never succeed as is: the record goes to its DLQ.
    Poison {
        class: &'static str,
        message: String,
    },
    /// May succeed later (a database or broker hiccup): abort and retry the batch.
    Retryable(anyhow::Error),
}

/// A component failure is the record's problem (DLQ), unless the runtime
/// is only busy, which a retry of the batch fixes.
impl From<crate::components::PluginError> for Failure {
    fn from(error: crate::components::PluginError) -> Self {
        match error {
            crate::components::PluginError::Unavailable(_) => Failure::Retryable(error.into()),
            other => Failure::Poison {
                class: other.class(),
                message: other.to_string(),
            },
        }
    }
}

/// A database error that will repeat on every retry (bad data, a violated
/// constraint, a value the domain cannot read) is the record's problem: it
/// goes to the DLQ. Connection, pool, serialization and deadlock errors may
/// pass: the batch is retried with backoff.
impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        if let Some(class) = deterministic_class(&error) {
            return Failure::Poison {
                class,
                message: format!("{error:#}"),
            };
        }
        Failure::Retryable(error.into())
    }
}

/// `Some(class)` when retrying cannot help: SQLSTATE class 22 (data
/// exception, e.g. `bigint out of range`, NUL in text) or 23 (integrity
/// constraint), or a stored value this code cannot decode.
pub fn deterministic_class(error: &sqlx::Error) -> Option<&'static str> {
    match error {
        sqlx::Error::Database(db) => match db.code().as_deref().map(|c| c.get(..2)) {
            Some(Some("22")) => Some("database_data"),
            Some(Some("23")) => Some("database_constraint"),
            _ => None,
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => Some("database_decode"),
        _ => None,
    }
}

pub type Decision = Result<Vec<Outbound>, Failure>;

impl Failure {
    /// Every record of a batch that failed as a whole, for a retry.
    pub fn retry_all(records: usize, error: &anyhow::Error) -> Vec<Decision> {
        let message = format!("{error:#}");
        (0..records)
            .map(|_| Err(Failure::Retryable(anyhow::anyhow!("{message}"))))
            .collect()
    }
}

/// A batch's decisions, as a batch-shaped stage fills them in.
pub struct Decisions(Vec<Option<Decision>>);

impl Decisions {
    /// Decodes every record; one that does not decode is decided at once.
    pub fn decode<T>(
        batch: &[Inbound],
        decode: impl Fn(&Inbound) -> Result<T, Failure>,
    ) -> (Decisions, Vec<(usize, T)>) {
        let mut decisions = Decisions((0..batch.len()).map(|_| None).collect());
        let mut items = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match decode(record) {
                Ok(item) => items.push((index, item)),
                Err(failure) => decisions.0[index] = Some(Err(failure)),
            }
        }
        (decisions, items)
    }

    pub fn set(&mut self, index: usize, decision: Decision) {
        self.0[index] = Some(decision);
    }

    pub fn is_set(&self, index: usize) -> bool {
        self.0[index].is_some()
    }

    pub fn extend(&mut self, decided: Vec<(usize, Decision)>) {
        for (index, decision) in decided {
            self.set(index, decision);
        }
    }

    pub fn into_vec(self) -> Vec<Decision> {
        self.0
            .into_iter()
            .map(|d| d.expect("every record decided"))
            .collect()
    }
}

/// Splits a batch's items into rounds that hold each key at most once, in
/// batch order: a stage that decides a round at once sees every aggregate
/// as the previous round left it.
pub fn rounds<T, K: std::hash::Hash + Eq>(
    items: &[(usize, T)],
    key: impl Fn(&T) -> K,
) -> Vec<Vec<usize>> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (position, (_, item)) in items.iter().enumerate() {
        let round = seen.entry(key(item)).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(position);
        *round += 1;
    }
    rounds
}

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

/// Runs `futures` at most `limit` at a time; results in completion order.
/// The futures are boxed so that `async_trait`'s `Send` bound does not have
/// to see through closures borrowing the batch.
pub async fn bounded<'a, T: Send + 'a>(futures: Vec<BoxFuture<'a, T>>, limit: usize) -> Vec<T> {
    futures::stream::iter(futures)
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}

/// The span a record's work runs in: its log lines carry the event's ids.
pub fn event_span(stage: &'static str, envelope: &Envelope) -> tracing::Span {
    tracing::info_span!("event",
        stage, eventId = %envelope.event_id, traceId = %envelope.trace_id,
        parentEventId = ?envelope.parent_event_id, aggregateId = %envelope.aggregate_id,
        eventType = %envelope.event_type)
}

pub fn decode(record: &Inbound) -> Result<Envelope, Failure> {
    serde_json::from_slice(&record.payload).map_err(|e| Failure::Poison {
        class: "undecodable",
        message: format!("not an event envelope: {e}"),
    })
}

/// Notices partition revocations so an open batch is aborted, not committed.
pub struct RebalanceWatch {
    revoked: AtomicBool,
}

impl ClientContext for RebalanceWatch {}

impl ConsumerContext for RebalanceWatch {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.revoked.store(true, Ordering::SeqCst);
        }
    }
}

pub type StageConsumer = StreamConsumer<RebalanceWatch>;

pub fn consumer(
    ctx: &PipelineContext,
    group: &str,
    topics: &[String],
) -> anyhow::Result<StageConsumer> {
    let consumer: StageConsumer = kafka::base_config(&ctx.config.kafka)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .create_with_context(RebalanceWatch {
            revoked: AtomicBool::new(false),
        })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    Ok(consumer)
}

/// Collects up to `max` records: waits for the first (or shutdown), then at
/// most `wait` for more.
pub async fn collect(
    consumer: &StageConsumer,
    max: usize,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Vec<Inbound> {
    let mut batch = Vec::new();
    let first = tokio::select! {
        _ = shutdown.cancelled() => return batch,
        message = consumer.recv() => message,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut next = Some(first);
    loop {
        match next.take() {
            Some(Ok(message)) => batch.push(Inbound {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: message.payload().unwrap_or_default().to_vec(),
            }),
            Some(Err(error)) => tracing::warn!(%error, "consume error"),
            None => {}
        }
        if batch.len() >= max {
            break;
        }
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(message) => next = Some(message),
            Err(_) => break,
        }
    }
    batch
}

/// Moves the consumer back to the first record of the batch per partition.
/// Returns false if a partition could not be rewound: the caller must then
/// rebuild the consumer, or the batch's records would be skipped.
pub fn rewind(consumer: &StageConsumer, batch: &[Inbound]) -> bool {
    let mut first: HashMap<(&str, i32), i64> = HashMap::new();
    for record in batch {
        let entry = first
            .entry((record.topic.as_str(), record.partition))
            .or_insert(record.offset);
        *entry = (*entry).min(record.offset);
    }
    for ((topic, partition), offset) in first {
        // seek blocks until the fetcher moved: off the async worker.
        let seek = tokio::task::block_in_place(|| {
            consumer.seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
        });
        if let Err(error) = seek {
            tracing::warn!(%error, topic, partition, "seek after abort failed; rebuilding the consumer");
            return false;
        }
    }
    true
}

/// Offsets to commit: last offset + 1 per partition.
pub fn next_offsets(batch: &[Inbound]) -> anyhow::Result<TopicPartitionList> {
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    for record in batch {
        let entry = last
            .entry((record.topic.as_str(), record.partition))
            .or_insert(record.offset);
        *entry = (*entry).max(record.offset);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        list.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
    }
    Ok(list)
}

pub fn envelope_headers(envelope: &Envelope, extra: &[(&'static str, String)]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::EVENT_ID,
            value: Some(&envelope.event_id.to_string()),
        })
        .insert(Header {
            key: header::EVENT_TYPE,
            value: Some(&envelope.event_type),
        })
        .insert(Header {
            key: header::TRACE_ID,
            value: Some(&envelope.trace_id),
        })
        .insert(Header {
            key: header::AGGREGATE_ID,
            value: Some(&envelope.aggregate_id),
        });
    if let Some(parent) = envelope.parent_event_id {
        headers = headers.insert(Header {
            key: header::PARENT_EVENT_ID,
            value: Some(&parent.to_string()),
        });
    }
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// Queues one record on the open transaction.
pub fn send(producer: &FutureProducer, names: &Names, out: &Outbound) -> anyhow::Result<()> {
    let topic = names.topic(out.topic);
    let payload = serde_json::to_vec(&out.envelope)?;
    let record = FutureRecord::to(&topic)
        .key(&out.key)
        .payload(&payload)
        .headers(envelope_headers(&out.envelope, &out.headers));
    producer
        .send_result(record)
        .map_err(|(error, _)| anyhow::anyhow!("queueing record for {topic}: {error}"))?;
    Ok(())
}

pub use crate::kafka::transaction::is_fatal;

/// Test fault injection: abort the next N transactions before commit.
#[derive(Default)]
pub struct AbortFailpoint(pub AtomicU32);

impl AbortFailpoint {
    fn armed(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }

    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
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
    let names = ctx.names.clone();
    let kafka = &ctx.config.kafka;
    let input = names.topic(stage.input_topic());
    let group = names.group(stage.name());
    let mut consumer = consumer(&ctx, &group, std::slice::from_ref(&input))?;
    let txid = names.transactional_id(stage.name(), &ctx.config.stages.instance_id, worker);
    let producer = kafka::transactional_producer(kafka, &txid)?;
    let wait = Duration::from_millis(kafka.batch_max_wait_ms);
    tracing::info!(stage = stage.name(), worker, %input, "stage worker started");
    let mut backoff = Duration::from_millis(100);

    while !shutdown.is_cancelled() {
        consumer.context().revoked.store(false, Ordering::SeqCst);
        let batch = collect(&consumer, kafka.batch_max_records, wait, &shutdown).await;
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let decisions = stage
            .handle_batch(&batch, ctx.config.stages.per_batch_concurrency)
            .await;
        if let Some(Failure::Retryable(error)) = decisions.iter().find_map(|d| match d {
            Err(f @ Failure::Retryable(_)) => Some(f),
            _ => None,
        }) {
            tracing::warn!(stage = stage.name(), error = %format!("{error:#}"), "batch failed; rewinding");
            crate::metrics::stage_batch(stage.name(), "retry", batch.len(), started);
            if !rewind(&consumer, &batch) {
                drop(consumer);
                consumer = self::consumer(&ctx, &group, std::slice::from_ref(&input))?;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);

        match commit_batch(
            &*stage, &ctx, &consumer, &producer, &batch, decisions, &failpoint,
        )
        .await
        {
            Ok(parkings) => {
                // Parked only once its DLQ record is committed: an aborted
                // transaction must not leave a PARKED order without one.
                dlq::park_all(&ctx.pool, stage.name(), parkings, &shutdown).await;
                crate::metrics::stage_batch(stage.name(), "committed", batch.len(), started)
            }
            Err(CommitError::Fatal(error)) => {
                crate::metrics::stage_batch(stage.name(), "fatal", batch.len(), started);
                return Err(error);
            }
            Err(CommitError::Aborted(reason)) => {
                tracing::warn!(stage = stage.name(), %reason, "transaction aborted; rewinding");
                crate::metrics::stage_batch(stage.name(), "aborted", batch.len(), started);
                // After a revocation the positions are the group's business:
                // a fresh consumer resumes from the committed offsets, which
                // a seek on a half-reassigned partition cannot guarantee.
                let revoked = consumer.context().revoked.load(Ordering::SeqCst);
                if revoked || !rewind(&consumer, &batch) {
                    drop(consumer);
                    consumer = self::consumer(&ctx, &group, std::slice::from_ref(&input))?;
                }
            }
        }
    }
    tracing::info!(stage = stage.name(), worker, "stage worker stopped");
    Ok(())
}

enum CommitError {
    Fatal(anyhow::Error),
    Aborted(String),
}

#[allow(clippy::too_many_arguments)]
async fn commit_batch<S: Stage>(
    stage: &S,
    ctx: &PipelineContext,
    consumer: &StageConsumer,
    producer: &FutureProducer,
    batch: &[Inbound],
    decisions: Vec<Decision>,
    failpoint: &AbortFailpoint,
) -> Result<Vec<dlq::Parking>, CommitError> {
    let names = &ctx.names;
    let mut parkings = Vec::new();
    let produces = decisions
        .iter()
        .any(|d| !matches!(d, Ok(outputs) if outputs.is_empty()));
    if !produces && !failpoint.armed() {
        // Nothing to produce: a plain offset commit is enough (the decisions
        // were idempotent DB writes), and cheaper than an empty transaction.
        if consumer.context().revoked.load(Ordering::SeqCst) {
            return Err(CommitError::Aborted(
                "partitions revoked during the batch".into(),
            ));
        }
        let offsets = next_offsets(batch).map_err(|e| CommitError::Aborted(format!("{e:#}")))?;
        // rdkafka's commit blocks until the broker answers.
        return tokio::task::block_in_place(|| consumer.commit(&offsets, CommitMode::Sync))
            .map(|()| Vec::new())
            .map_err(|e| CommitError::Aborted(format!("offset commit: {e}")));
    }
    let revoked = || consumer.context().revoked.load(Ordering::SeqCst);
    let offsets = next_offsets(batch).map_err(|e| CommitError::Aborted(format!("{e:#}")))?;
    let group = consumer
        .group_metadata()
        .ok_or_else(|| CommitError::Aborted("no consumer group metadata".into()))?;
    let queue = || -> anyhow::Result<()> {
        for (record, decision) in batch.iter().zip(decisions) {
            match decision {
                Ok(outputs) => {
                    for out in &outputs {
                        send(producer, names, out)?;
                    }
                }
                Err(Failure::Poison { class, message }) => {
                    let envelope = decode(record).ok();
                    tracing::error!(stage = stage.name(), topic = %record.topic, offset = record.offset, class, %message, "poison message to DLQ");
                    crate::metrics::dlq(stage.name(), stage.input_topic(), class);
                    let letter = dlq::Letter {
                        stage: stage.name(),
                        record,
                        envelope: envelope.as_ref(),
                        class,
                        message: &message,
                    };
                    dlq::send(producer, names, &letter)?;
                    if let Some(order_id) = order_id_of(record, envelope.as_ref()) {
                        parkings.push((order_id, message));
                    }
                }
                Err(Failure::Retryable(_)) => {
                    unreachable!("retryable batches are rewound before commit")
                }
            }
        }
        anyhow::ensure!(!failpoint.take(), "failpoint: abort before commit");
        anyhow::ensure!(!revoked(), "partitions revoked during the batch");
        Ok(())
    };
    let offsets = Offsets {
        offsets: &offsets,
        group: &group,
    };
    match transaction::produce(producer, queue, Some(offsets)) {
        Ok(()) => Ok(parkings),
        Err(TxnError::Fatal(error)) => Err(CommitError::Fatal(error)),
        Err(TxnError::Aborted(reason)) => Err(CommitError::Aborted(reason)),
    }
}

/// Reads an id header from a record (tools and tests use it).
pub fn header_value(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
    name: &str,
) -> Option<String> {
    let headers = headers?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// Parses an order id from a record key or envelope (for parking).
pub fn order_id_of(record: &Inbound, envelope: Option<&Envelope>) -> Option<Uuid> {
    envelope
        .and_then(|e| {
            e.data
                .get("paymentOrderId")
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
        })
        .or_else(|| record.key.as_deref().and_then(|k| k.parse().ok()))
}
