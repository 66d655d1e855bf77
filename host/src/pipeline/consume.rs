//! The consuming side of a stage: a `read_committed` consumer that notices
//! revocations, batch collection, rewinds and the offsets to commit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka;

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

/// Notices partition revocations so an open batch is aborted, not committed.
/// The flag is shared with the batch's commit, which runs on another thread.
pub struct RebalanceWatch {
    revoked: Arc<AtomicBool>,
}

impl RebalanceWatch {
    pub fn revoked(&self) -> Arc<AtomicBool> {
        self.revoked.clone()
    }
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

/// A stage worker's consumer. `member` is its static group membership
/// (KIP-345), stable per (stage, node instance, worker) like its
/// transactional id: a worker restarted after a crash takes over its old
/// member and assignment at once instead of waiting for the group to notice
/// the dead member (up to `session.timeout.ms` on Kafka; on a broker that
/// never expires members, such as noida-db, forever).
pub fn consumer(
    ctx: &PipelineContext,
    group: &str,
    member: &str,
    topics: &[String],
) -> anyhow::Result<StageConsumer> {
    let consumer: StageConsumer = kafka::base_config(&ctx.config.kafka)
        .set("group.id", group)
        .set("group.instance.id", member)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .create_with_context(RebalanceWatch {
            revoked: Arc::new(AtomicBool::new(false)),
        })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    Ok(consumer)
}

/// How long a worker waits for its old consumer's close before it goes on
/// without it: well inside the node's 20 s stop budget, so a stopping
/// worker still closes in order.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A worker's consumer, closed off the async runtime. librdkafka's close
/// (run when the last handle drops) handles the final revoke with an
/// `rd_kafka_assign` that has no timeout; on noida-db it was seen to wait
/// forever, holding a runtime worker thread and then the runtime's shutdown.
/// On a thread of its own such a close costs that thread, nothing more.
pub struct OwnedConsumer(Option<Arc<StageConsumer>>);

impl OwnedConsumer {
    pub fn new(consumer: StageConsumer) -> Self {
        OwnedConsumer(Some(Arc::new(consumer)))
    }

    /// A handle for a batch's commit, which runs on a blocking thread.
    pub fn shared(&self) -> Arc<StageConsumer> {
        self.0.clone().expect("an open consumer")
    }

    /// Closes the consumer and waits (bounded) for the close to end; it is
    /// closed from then on. The wait keeps a worker's lives in order: each
    /// joins under the same static member id (`group.instance.id`).
    pub async fn close(&mut self, stage: &str) {
        let closed = close_off_runtime(self.0.take());
        if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
            let waited = CLOSE_WAIT.as_secs();
            tracing::warn!(
                stage,
                waited,
                "consumer close still running; going on without it"
            );
        }
    }
}

impl std::ops::Deref for OwnedConsumer {
    type Target = StageConsumer;

    fn deref(&self) -> &StageConsumer {
        self.0.as_deref().expect("an open consumer")
    }
}

/// A worker dropped without `close` (its task cancelled at shutdown) still
/// closes off the runtime; nothing waits for it.
impl Drop for OwnedConsumer {
    fn drop(&mut self) {
        drop(close_off_runtime(self.0.take()));
    }
}

/// Drops the last handle of `consumer` on a thread of its own (a commit still
/// running holds a clone; the close waits for it) and says when it is done.
fn close_off_runtime(consumer: Option<Arc<StageConsumer>>) -> tokio::sync::oneshot::Receiver<()> {
    let (done, closed) = tokio::sync::oneshot::channel();
    let Some(consumer) = consumer else {
        let _ = done.send(());
        return closed;
    };
    let closing = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            let mut consumer = consumer;
            loop {
                match Arc::try_unwrap(consumer) {
                    Ok(last) => {
                        drop(last);
                        break;
                    }
                    Err(shared) => consumer = shared,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = done.send(());
        });
    if let Err(error) = closing {
        // The closure (and the consumer in it) was dropped here, on the
        // caller: the old hazard, but only when no thread can be had.
        tracing::warn!(%error, "no thread to close a consumer on; closed in place");
    }
    closed
}

/// What woke a stage worker waiting for its next batch.
pub enum Woken<T> {
    Batch(Vec<Inbound>),
    /// `other` finished first (the previous batch's commit).
    Other(T),
    Shutdown,
}

/// Collects up to `max` records: waits for the first (or shutdown, or
/// `other`), then at most `wait` for more. Only the wait for the first
/// record races `other`: once a batch has begun it is always completed,
/// so no consumed record is ever dropped on the floor.
pub async fn collect<T>(
    consumer: &StageConsumer,
    max: usize,
    wait: Duration,
    shutdown: &CancellationToken,
    other: impl Future<Output = T>,
) -> Woken<T> {
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Woken::Shutdown,
        done = other => return Woken::Other(done),
        message = consumer.recv() => message,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut batch = Vec::new();
    let mut next = Some(first);
    loop {
        match next.take() {
            Some(Ok(message)) => batch.push(inbound(&message)),
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
    Woken::Batch(batch)
}

fn inbound(message: &rdkafka::message::BorrowedMessage<'_>) -> Inbound {
    Inbound {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: message.payload().unwrap_or_default().to_vec(),
    }
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
