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
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::events::Envelope;
use crate::kafka::{self, header, Names};

use super::PipelineContext;

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

/// A dead-lettered record's payment order becomes PARKED (final orders stay
/// final), so it is visible until `dlq replay` resumes it.
pub async fn park_order(
    pool: &sqlx::PgPool,
    record: &Inbound,
    envelope: Option<&Envelope>,
    reason: &str,
) -> anyhow::Result<()> {
    if let Some(order_id) = order_id_of(record, envelope) {
        crate::store::orders::park(pool, order_id, reason).await?;
    }
    Ok(())
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Failure::Retryable(error.into())
    }
}

pub type Decision = Result<Vec<Outbound>, Failure>;

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
                        let span = tracing::info_span!("event",
                            stage = self.name(), eventId = %envelope.event_id, traceId = %envelope.trace_id,
                            parentEventId = ?envelope.parent_event_id, aggregateId = %envelope.aggregate_id,
                            eventType = %envelope.event_type);
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
        if let Err(error) = consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
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

fn send_to_dlq(
    producer: &FutureProducer,
    names: &Names,
    stage: &str,
    record: &Inbound,
    class: &str,
    message: &str,
) -> anyhow::Result<()> {
    let logical = names.strip(&record.topic).unwrap_or(&record.topic);
    let topic = names.dlq(logical);
    let partition = record.partition.to_string();
    let offset = record.offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: header::DLQ_ERROR_CLASS,
            value: Some(class),
        })
        .insert(Header {
            key: header::DLQ_ERROR_MESSAGE,
            value: Some(message),
        })
        .insert(Header {
            key: header::DLQ_STAGE,
            value: Some(stage),
        })
        .insert(Header {
            key: header::DLQ_ORIGINAL_TOPIC,
            value: Some(logical),
        })
        .insert(Header {
            key: header::DLQ_ORIGINAL_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: header::DLQ_ORIGINAL_OFFSET,
            value: Some(&offset),
        });
    let mut dlq_record = FutureRecord::to(&topic)
        .payload(&record.payload)
        .headers(headers);
    if let Some(key) = &record.key {
        dlq_record = dlq_record.key(key);
    }
    producer
        .send_result(dlq_record)
        .map_err(|(error, _)| anyhow::anyhow!("queueing DLQ record: {error}"))?;
    Ok(())
}

/// Is this Kafka error the end of this producer (fenced, fatal)?
pub fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::ProducerFenced)
                | Some(rdkafka::types::RDKafkaErrorCode::Fatal)
        ),
    }
}

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
    let timeout = Duration::from_secs(30);
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
            &*stage, &ctx, &consumer, &producer, &batch, decisions, &failpoint, timeout,
        )
        .await
        {
            Ok(()) => crate::metrics::stage_batch(stage.name(), "committed", batch.len(), started),
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
    timeout: Duration,
) -> Result<(), CommitError> {
    let names = &ctx.names;
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
        return consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|e| CommitError::Aborted(format!("offset commit: {e}")));
    }
    producer
        .begin_transaction()
        .map_err(|e| fatal_or_aborted(e, "begin"))?;
    let abort = |reason: String| {
        if let Err(error) = producer.abort_transaction(timeout) {
            if is_fatal(&error) {
                return CommitError::Fatal(anyhow::anyhow!("abort failed: {error}"));
            }
        }
        CommitError::Aborted(reason)
    };
    for (record, decision) in batch.iter().zip(decisions) {
        let queued = match decision {
            Ok(outputs) => outputs
                .iter()
                .try_for_each(|out| send(producer, names, out)),
            Err(Failure::Poison { class, message }) => {
                let envelope = decode(record).ok();
                tracing::error!(stage = stage.name(), topic = %record.topic, offset = record.offset, class, %message, "poison message to DLQ");
                crate::metrics::dlq(stage.name(), stage.input_topic(), class);
                if let Err(error) = park_order(&ctx.pool, record, envelope.as_ref(), &message).await
                {
                    return Err(abort(format!("parking the order: {error:#}")));
                }
                send_to_dlq(producer, names, stage.name(), record, class, &message)
            }
            Err(Failure::Retryable(_)) => {
                unreachable!("retryable batches are rewound before commit")
            }
        };
        if let Err(error) = queued {
            return Err(abort(format!("{error:#}")));
        }
    }
    if failpoint.take() {
        return Err(abort("failpoint: abort before commit".into()));
    }
    if consumer.context().revoked.load(Ordering::SeqCst) {
        return Err(abort("partitions revoked during the batch".into()));
    }
    let offsets = next_offsets(batch).map_err(|e| abort(format!("{e:#}")))?;
    let metadata = consumer
        .group_metadata()
        .ok_or_else(|| abort("no consumer group metadata".into()))?;
    // rdkafka's transaction calls block until the broker answers; keep them
    // off the async worker so HTTP and other stages keep running.
    if let Err(error) = tokio::task::block_in_place(|| {
        producer.send_offsets_to_transaction(&offsets, &metadata, timeout)
    }) {
        if is_fatal(&error) {
            return Err(CommitError::Fatal(error.into()));
        }
        return Err(abort(format!("send_offsets_to_transaction: {error}")));
    }
    if let Err(error) = tokio::task::block_in_place(|| producer.commit_transaction(timeout)) {
        if is_fatal(&error) {
            return Err(CommitError::Fatal(error.into()));
        }
        return Err(abort(format!("commit_transaction: {error}")));
    }
    Ok(())
}

fn fatal_or_aborted(error: KafkaError, what: &str) -> CommitError {
    if is_fatal(&error) {
        CommitError::Fatal(anyhow::anyhow!("{what}: {error}"))
    } else {
        CommitError::Aborted(format!("{what}: {error}"))
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
