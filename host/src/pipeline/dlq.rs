//! Dead letters: a poison record goes to `<topic>.DLQ` inside the stage's
//! Kafka transaction, with headers saying why; its payment order is parked
//! only after that transaction committed, so a PARKED order always has its
//! DLQ record (an aborted batch parks nothing and is simply redelivered).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::consume::Inbound;
use crate::domain::events::Envelope;
use crate::kafka::{header, Names};

/// One record on its way to a DLQ.
pub struct Letter<'a> {
    pub stage: &'a str,
    pub record: &'a Inbound,
    pub envelope: Option<&'a Envelope>,
    pub class: &'a str,
    pub message: &'a str,
}

/// An order to park once its letter is committed: (order, reason).
pub type Parking = (Uuid, String);

/// Queues the letter on the open transaction.
pub fn send(producer: &FutureProducer, names: &Names, letter: &Letter<'_>) -> anyhow::Result<()> {
    let record = letter.record;
    let logical = names.strip(&record.topic).unwrap_or(&record.topic);
    let topic = names.dlq(logical);
    let partition = record.partition.to_string();
    let offset = record.offset.to_string();
    let event_id = letter.envelope.map(|e| e.event_id.to_string());
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        (header::DLQ_ERROR_CLASS, Some(letter.class)),
        (header::DLQ_ERROR_MESSAGE, Some(letter.message)),
        (header::DLQ_STAGE, Some(letter.stage)),
        (header::DLQ_ORIGINAL_TOPIC, Some(logical)),
        (header::DLQ_ORIGINAL_PARTITION, Some(partition.as_str())),
        (header::DLQ_ORIGINAL_OFFSET, Some(offset.as_str())),
        // An undecodable record has no event id to name.
        (header::EVENT_ID, event_id.as_deref()),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
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

/// Parks the orders of committed letters. The letters are already durable,
/// so a failing database is retried (with backoff, until shutdown) rather
/// than left: until it is parked, an order would look merely slow.
pub async fn park_all(
    pool: &sqlx::PgPool,
    stage: &str,
    parkings: Vec<Parking>,
    shutdown: &CancellationToken,
) {
    for (order_id, reason) in parkings {
        let mut backoff = Duration::from_millis(100);
        loop {
            match crate::store::orders::park(pool, order_id, &reason).await {
                Ok(parked) => {
                    tracing::warn!(stage, %order_id, parked, "order of a dead letter");
                    break;
                }
                Err(error) if !shutdown.is_cancelled() => {
                    tracing::warn!(stage, %order_id, %error, "parking failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::error!(stage, %order_id, %error, "shutting down with an unparked dead letter (reconcile reports it)");
                    break;
                }
            }
        }
    }
}
