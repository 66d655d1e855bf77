//! Committing one decided batch: its outputs, its DLQ letters and its
//! consumer offsets in one Kafka transaction (or a plain offset commit when
//! it produces nothing). A commit runs on a blocking thread, so the stage
//! loop can collect and decide the next batch meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use uuid::Uuid;

use crate::domain::events::Envelope;
use crate::kafka::transaction::{self, Offsets, TxnError};
use crate::kafka::Names;

use super::consume::{next_offsets, Inbound, StageConsumer};
use super::decision::{decode, Decision, Failure};
use super::dlq;
use super::outbound::send;

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

#[derive(Debug)]
pub enum CommitError {
    /// The producer is unusable (fenced): the worker must stop.
    Fatal(anyhow::Error),
    /// Nothing was committed; the batch must be read again.
    Aborted(String),
}

/// Everything one batch's commit needs, owned, so it can leave the task.
pub struct Commit {
    pub stage: &'static str,
    pub input_topic: &'static str,
    pub names: Names,
    pub consumer: Arc<StageConsumer>,
    pub producer: Arc<FutureProducer>,
    pub revoked: Arc<AtomicBool>,
    pub failpoint: Arc<AbortFailpoint>,
    pub batch: Arc<Vec<Inbound>>,
    pub decisions: Vec<Decision>,
}

impl Commit {
    /// Blocks until the broker answered. Returns the orders to park, which
    /// the caller parks only now that their DLQ letters are committed.
    pub fn run(self) -> Result<Vec<dlq::Parking>, CommitError> {
        let produces = self
            .decisions
            .iter()
            .any(|d| !matches!(d, Ok(outputs) if outputs.is_empty()));
        if !produces && !self.failpoint.armed() {
            return self.commit_offsets();
        }
        self.commit_transaction()
    }

    /// Nothing to produce: a plain offset commit is enough (the decisions
    /// were idempotent DB writes), and cheaper than an empty transaction.
    fn commit_offsets(self) -> Result<Vec<dlq::Parking>, CommitError> {
        if self.revoked.load(Ordering::SeqCst) {
            return Err(CommitError::Aborted(
                "partitions revoked during the batch".into(),
            ));
        }
        let offsets = next_offsets(&self.batch).map_err(aborted)?;
        self.consumer
            .commit(&offsets, CommitMode::Sync)
            .map(|()| Vec::new())
            .map_err(|e| CommitError::Aborted(format!("offset commit: {e}")))
    }

    fn commit_transaction(self) -> Result<Vec<dlq::Parking>, CommitError> {
        let offsets = next_offsets(&self.batch).map_err(aborted)?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| CommitError::Aborted("no consumer group metadata".into()))?;
        let mut parkings = Vec::new();
        let queue = || -> anyhow::Result<()> {
            for (record, decision) in self.batch.iter().zip(&self.decisions) {
                match decision {
                    Ok(outputs) => {
                        for out in outputs {
                            send(&self.producer, &self.names, out)?;
                        }
                    }
                    Err(Failure::Poison { class, message }) => {
                        parkings.extend(self.dead_letter(record, class, message)?);
                    }
                    Err(Failure::Retryable(_)) => {
                        unreachable!("retryable batches are rewound before commit")
                    }
                }
            }
            anyhow::ensure!(!self.failpoint.take(), "failpoint: abort before commit");
            anyhow::ensure!(
                !self.revoked.load(Ordering::SeqCst),
                "partitions revoked during the batch"
            );
            Ok(())
        };
        let offsets = Offsets {
            offsets: &offsets,
            group: &group,
        };
        match transaction::produce(&self.producer, queue, Some(offsets)) {
            Ok(()) => Ok(parkings),
            Err(TxnError::Fatal(error)) => Err(CommitError::Fatal(error)),
            Err(TxnError::Aborted(reason)) => Err(CommitError::Aborted(reason)),
        }
    }

    /// Queues a poison record's letter; returns its order, to park.
    fn dead_letter(
        &self,
        record: &Inbound,
        class: &'static str,
        message: &str,
    ) -> anyhow::Result<Option<dlq::Parking>> {
        let envelope = decode(record).ok();
        tracing::error!(stage = self.stage, topic = %record.topic, offset = record.offset, class, %message, "poison message to DLQ");
        crate::metrics::dlq(self.stage, self.input_topic, class);
        let letter = dlq::Letter {
            stage: self.stage,
            record,
            envelope: envelope.as_ref(),
            class,
            message,
        };
        dlq::send(&self.producer, &self.names, &letter)?;
        Ok(order_id_of(record, envelope.as_ref()).map(|id| (id, message.to_string())))
    }
}

fn aborted(error: anyhow::Error) -> CommitError {
    CommitError::Aborted(format!("{error:#}"))
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
