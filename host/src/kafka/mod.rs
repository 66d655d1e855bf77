//! Kafka plumbing shared by every stage: topic names (with the node's
//! prefix), client settings, transactional producers, topic creation.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use secrecy::ExposeSecret;

use crate::config::KafkaConfig;

pub mod transaction;

/// The seed's topics, in flow order.
pub mod topic {
    pub const PAYMENT_ORDER_CREATED: &str = "payment_order_created_topic";
    pub const PSP_CALL_REQUESTED: &str = "payment_order_psp_call_requested_topic";
    pub const PSP_RESULT_UPDATED: &str = "payment_order_psp_result_updated_topic";
    pub const PAYMENT_ORDER_FINALIZED: &str = "payment_order_finalized_topic";
    pub const LEDGER_RECORD_REQUEST: &str = "ledger_record_request_queue_topic";
    pub const LEDGER_ENTRIES_RECORDED: &str = "ledger_entries_recorded_topic";
    pub const REFUND_REQUESTED: &str = "refund_requested_topic";
    pub const REFUND_FINALIZED: &str = "refund_finalized_topic";

    pub const ALL: [&str; 8] = [
        PAYMENT_ORDER_CREATED,
        PSP_CALL_REQUESTED,
        PSP_RESULT_UPDATED,
        PAYMENT_ORDER_FINALIZED,
        LEDGER_RECORD_REQUEST,
        LEDGER_ENTRIES_RECORDED,
        REFUND_REQUESTED,
        REFUND_FINALIZED,
    ];
}

/// Header names carried on every record (the envelope ids, for tools that
/// do not parse the value) and on DLQ records (why it is there).
pub mod header {
    pub const EVENT_ID: &str = "eventId";
    pub const EVENT_TYPE: &str = "eventType";
    pub const TRACE_ID: &str = "traceId";
    pub const PARENT_EVENT_ID: &str = "parentEventId";
    pub const AGGREGATE_ID: &str = "aggregateId";
    pub const COMPONENT_SHA256: &str = "componentSha256";
    pub const DLQ_ERROR_CLASS: &str = "dlq.errorClass";
    pub const DLQ_ERROR_MESSAGE: &str = "dlq.errorMessage";
    pub const DLQ_STAGE: &str = "dlq.stage";
    pub const DLQ_ORIGINAL_TOPIC: &str = "dlq.originalTopic";
    pub const DLQ_ORIGINAL_PARTITION: &str = "dlq.originalPartition";
    pub const DLQ_ORIGINAL_OFFSET: &str = "dlq.originalOffset";
}

/// Names with this node's prefix applied.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
        }
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    pub fn dlq(&self, base: &str) -> String {
        format!("{}{base}.DLQ", self.prefix)
    }

    pub fn group(&self, stage: &str) -> String {
        format!("{}paynode.{stage}", self.prefix)
    }

    /// Stable per (stage, node instance, worker): a restarted worker fences
    /// its predecessor's open transaction.
    pub fn transactional_id(&self, stage: &str, instance: &str, worker: usize) -> String {
        format!("{}paynode.{stage}.{instance}.{worker}", self.prefix)
    }

    pub fn redis_key(&self, name: &str) -> String {
        format!("{}paynode:{name}", self.prefix)
    }

    /// The logical topic of a prefixed name, if it is one of ours.
    pub fn strip<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(self.prefix.as_str())
    }
}

/// Connection settings every client shares (brokers, TLS, SASL).
pub fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("security.protocol", &config.security_protocol);
    if let Some(mechanism) = &config.sasl_mechanism {
        client.set("sasl.mechanism", mechanism);
    }
    if let Some(user) = &config.sasl_username {
        client.set("sasl.username", user);
    }
    if let Some(password) = &config.sasl_password {
        client.set("sasl.password", password.expose_secret());
    }
    if let Some(ca) = &config.ssl_ca_location {
        client.set("ssl.ca.location", ca.to_string_lossy().as_ref());
    }
    client
}

/// A transactional producer with `init_transactions` done.
pub fn transactional_producer(
    config: &KafkaConfig,
    transactional_id: &str,
) -> anyhow::Result<FutureProducer> {
    let producer: FutureProducer = base_config(config)
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout_ms.to_string(),
        )
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .create()
        .context("creating transactional producer")?;
    producer
        .init_transactions(Duration::from_secs(30))
        .with_context(|| format!("init_transactions for {transactional_id}"))?;
    Ok(producer)
}

/// The transactional producer of one producing worker for this life of
/// the node: `base` (stable per stage, node instance and worker) plus a
/// generation bumped at every start.
///
/// Why not `base` itself: re-initialising a transactional id keeps its
/// producer id (only the epoch moves), and a broker that lists an aborted
/// transaction in every later fetch of the partition, however old (noida-db
/// 0.2.3 does; Kafka lists only those overlapping the fetched range), makes
/// `read_committed` readers skip every later record of that producer id
/// there. A killed node's open transactions are exactly such aborts. So the
/// new life first re-initialises every earlier generation not yet known to
/// be fenced (a life killed while starting may not have fenced its
/// predecessor), which aborts what a killed life left open, and then
/// produces under a new id, hence a new producer id. On Kafka this costs an
/// extra `init_transactions` per worker start.
pub async fn producer_for_this_life(
    config: &KafkaConfig,
    pool: &sqlx::PgPool,
    base: &str,
) -> anyhow::Result<FutureProducer> {
    use crate::store::transactional_ids;
    let (generation, fenced) = transactional_ids::next_generation(pool, base)
        .await
        .context("next transactional id generation")?;
    // Ids from before generations existed are `base` itself.
    let mut earlier: Vec<String> = (fenced + 1..generation)
        .map(|g| format!("{base}.g{g}"))
        .collect();
    if fenced < 0 {
        earlier.insert(0, base.to_string());
    }
    for id in &earlier {
        drop(tokio::task::block_in_place(|| {
            transactional_producer(config, id)
        })?);
    }
    transactional_ids::mark_fenced(pool, base, generation - 1)
        .await
        .context("recording fenced generations")?;
    let current = format!("{base}.g{generation}");
    tokio::task::block_in_place(|| transactional_producer(config, &current))
}

/// Creates every topic and its DLQ if missing (idempotent).
pub async fn create_topics(config: &KafkaConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(config).create()?;
    let names = Names::new(&config.prefix);
    let mut wanted = Vec::new();
    for base in topic::ALL {
        wanted.push(names.topic(base));
        wanted.push(names.dlq(base));
    }
    let new_topics: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .context("create_topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
