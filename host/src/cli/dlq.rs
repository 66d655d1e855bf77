//! `paynode dlq list|replay`: read dead-lettered records, and put them back
//! on their original topic. Replay deliberately skips any "already seen"
//! shortcut: the stage handles the record as new, resuming a PARKED order.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, header, topic, Names};
use crate::store::orders::{self, Pin};

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// Print every record in the DLQs (or one DLQ).
    List {
        /// Logical topic whose DLQ to read (default: all).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Re-produce DLQ records of `topic` to it (all, or one offset).
    Replay {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: Option<i32>,
        #[arg(long)]
        offset: Option<i64>,
        #[arg(long, default_value = "cli")]
        actor: String,
    },
}

pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a whole DLQ topic from the beginning without joining a group.
pub fn read_all(config: &Config, dlq_topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = kafka::base_config(&config.kafka)
        .set(
            "group.id",
            format!("{}paynode.dlq-reader", config.kafka.prefix),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(dlq_topic), timeout)?;
    let mut list = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(dlq_topic, p.id(), timeout)?;
            if high > low {
                list.add_partition_offset(dlq_topic, p.id(), Offset::Offset(low))?;
                remaining += high - low;
                ends.push((p.id(), high));
            }
        }
    }
    let mut letters = Vec::new();
    if remaining == 0 {
        return Ok(letters);
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            if ends.iter().all(|(p, high)| {
                letters
                    .iter()
                    .any(|l: &DeadLetter| l.partition == *p && l.offset + 1 >= *high)
            }) {
                break;
            }
            continue;
        };
        let message = message?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        letters.push(DeadLetter {
            topic: dlq_topic.to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    Ok(letters)
}

/// Re-produces the chosen letters to `base_topic`. First, each letter's
/// PARKED order is resumed (PENDING) in the database, and a PSP call
/// request's order is re-pinned to the adapter activation active now (the
/// pinned one is what failed): only this explicit replay may re-pin, and
/// the audit says so per order.
pub async fn replay(
    config: &Config,
    base_topic: &str,
    partition: Option<i32>,
    offset: Option<i64>,
    actor: &str,
) -> anyhow::Result<usize> {
    let names = Names::new(&config.kafka.prefix);
    let letters: Vec<DeadLetter> = read_all(config, &names.dlq(base_topic))?
        .into_iter()
        .filter(|l| {
            partition.is_none_or(|p| p == l.partition) && offset.is_none_or(|o| o == l.offset)
        })
        .collect();
    let pool = crate::store::connect(&config.database).await?;
    let repin = if base_topic == topic::PSP_CALL_REQUESTED {
        active_adapter(&pool).await?
    } else {
        None
    };
    resume_orders(&pool, &letters, repin.as_ref(), actor).await?;
    let producer: FutureProducer = kafka::base_config(&config.kafka)
        .set("enable.idempotence", "true")
        .create()?;
    let target = names.topic(base_topic);
    let mut replayed = 0;
    for letter in &letters {
        let mut record = FutureRecord::to(&target).payload(&letter.payload);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("replaying offset {}: {e}", letter.offset))?;
        replayed += 1;
    }
    pool.close().await;
    Ok(replayed)
}

async fn active_adapter(pool: &sqlx::PgPool) -> anyhow::Result<Option<Pin>> {
    Ok(crate::store::plugins::active(pool)
        .await?
        .into_iter()
        .find(|a| a.slot == crate::components::Slot::PspAdapter.as_str())
        .map(|a| Pin {
            sha256: a.sha256,
            activation_id: a.id,
        }))
}

/// PARKED → PENDING for every letter's order, each with its audit row.
async fn resume_orders(
    pool: &sqlx::PgPool,
    letters: &[DeadLetter],
    repin: Option<&Pin>,
    actor: &str,
) -> anyhow::Result<()> {
    for letter in letters {
        let Some(order_id) = letter_order(letter) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        let resumed = orders::resume_parked(&mut tx, order_id, repin).await?;
        if resumed {
            sqlx::query("INSERT INTO admin_audit (actor, action, target, details) VALUES ($1, 'dlq-resume', $2, $3)")
                .bind(actor)
                .bind(order_id.to_string())
                .bind(serde_json::json!({
                    "dlqTopic": letter.topic, "offset": letter.offset,
                    "repinnedTo": repin.map(|p| serde_json::json!({ "sha256": p.sha256, "activationId": p.activation_id })),
                }))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The payment order a dead letter is about: the envelope's
/// `paymentOrderId`, else a key that is one.
fn letter_order(letter: &DeadLetter) -> Option<uuid::Uuid> {
    let envelope: Option<crate::domain::events::Envelope> =
        serde_json::from_slice(&letter.payload).ok();
    envelope
        .and_then(|e| e.data.get("paymentOrderId")?.as_str()?.parse().ok())
        .or_else(|| {
            let key = letter.key.as_deref()?;
            std::str::from_utf8(key).ok()?.parse().ok()
        })
}

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let names = Names::new(&config.kafka.prefix);
    match command {
        DlqCommand::List { topic: which } => {
            let topics: Vec<String> = match which {
                Some(t) => vec![t],
                None => topic::ALL.iter().map(|t| t.to_string()).collect(),
            };
            let mut total = 0;
            for base in topics {
                let letters = read_all(config, &names.dlq(&base))?;
                for l in &letters {
                    println!(
                        "{}[{}]@{} class={} stage={} event={} reason={}",
                        l.topic,
                        l.partition,
                        l.offset,
                        l.header(header::DLQ_ERROR_CLASS).unwrap_or("?"),
                        l.header(header::DLQ_STAGE).unwrap_or("?"),
                        l.header(header::EVENT_ID).unwrap_or("-"),
                        l.header(header::DLQ_ERROR_MESSAGE).unwrap_or("?"),
                    );
                }
                total += letters.len();
            }
            println!("{total} dead-lettered record(s)");
        }
        DlqCommand::Replay {
            topic: base,
            partition,
            offset,
            actor,
        } => {
            let count = replay(config, &base, partition, offset, &actor).await?;
            let pool = crate::store::connect(&config.database).await?;
            crate::store::plugins::audit(
                &pool,
                &actor,
                "dlq-replay",
                &base,
                &serde_json::json!({ "partition": partition, "offset": offset, "replayed": count }),
            )
            .await?;
            println!("replayed {count} record(s) to {base}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
