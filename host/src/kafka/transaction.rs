//! One Kafka transaction, the same way for every loop that produces: begin,
//! queue the records, optionally send the consumer's offsets, commit; on
//! any failure, abort. librdkafka's transaction calls block until the
//! broker answers, so they run off the async workers (`block_in_place`).

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;

/// How a transaction ended when it did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The producer is done (fenced, fatal): its worker must stop.
    #[error("producer unusable: {0:#}")]
    Fatal(anyhow::Error),
    /// Aborted; the caller rewinds and tries again.
    #[error("transaction aborted: {0}")]
    Aborted(String),
}

/// The consumer offsets a consume → produce transaction commits with its records.
pub struct Offsets<'a> {
    pub offsets: &'a TopicPartitionList,
    pub group: &'a ConsumerGroupMetadata,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `queue` (which queues records on the producer) inside one
/// transaction and commits it, with `offsets` when given.
pub fn produce(
    producer: &FutureProducer,
    queue: impl FnOnce() -> anyhow::Result<()>,
    offsets: Option<Offsets<'_>>,
) -> Result<(), TxnError> {
    producer
        .begin_transaction()
        .map_err(|e| classify(e, "begin_transaction"))?;
    if let Err(error) = queue() {
        return Err(abort(producer, format!("{error:#}")));
    }
    if let Some(Offsets { offsets, group }) = offsets {
        let sent = tokio::task::block_in_place(|| {
            producer.send_offsets_to_transaction(offsets, group, TIMEOUT)
        });
        if let Err(error) = sent {
            return Err(fatal_or_abort(
                producer,
                error,
                "send_offsets_to_transaction",
            ));
        }
    }
    let committed = tokio::task::block_in_place(|| producer.commit_transaction(TIMEOUT));
    committed.map_err(|error| fatal_or_abort(producer, error, "commit_transaction"))
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

fn classify(error: KafkaError, what: &str) -> TxnError {
    if is_fatal(&error) {
        TxnError::Fatal(anyhow::anyhow!("{what}: {error}"))
    } else {
        TxnError::Aborted(format!("{what}: {error}"))
    }
}

fn fatal_or_abort(producer: &FutureProducer, error: KafkaError, what: &str) -> TxnError {
    if is_fatal(&error) {
        return TxnError::Fatal(anyhow::anyhow!("{what}: {error}"));
    }
    abort(producer, format!("{what}: {error}"))
}

fn abort(producer: &FutureProducer, reason: String) -> TxnError {
    match tokio::task::block_in_place(|| producer.abort_transaction(TIMEOUT)) {
        Err(error) if is_fatal(&error) => {
            TxnError::Fatal(anyhow::anyhow!("abort after {reason}: {error}"))
        }
        _ => TxnError::Aborted(reason),
    }
}

/// A new producer for the worker whose transactional id's stable base is
/// `base`, replacing one that became unusable. A broker that restarted can
/// forget a producer's sequence numbers (`OUT_OF_ORDER_SEQUENCE_NUMBER` is
/// then fatal for it), so a worker must not die with its producer: it
/// starts a new life (`producer_for_this_life`: earlier generations fenced,
/// a new producer id) and carries on. Retried with backoff while the
/// broker or Postgres is away; `None` only at shutdown.
pub async fn reinit(
    config: &KafkaConfig,
    pool: &sqlx::PgPool,
    base: &str,
    shutdown: &CancellationToken,
) -> Option<FutureProducer> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match super::producer_for_this_life(config, pool, base).await {
            Ok(producer) => {
                tracing::warn!(
                    transactional_id = base,
                    "transactional producer re-initialised"
                );
                crate::metrics::producer_reinit();
                return Some(producer);
            }
            Err(error) => {
                tracing::warn!(transactional_id = base, error = %format!("{error:#}"), "re-initialising the producer failed; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
