//! Readiness of the node's dependencies: Postgres, the broker and Redis,
//! each asked now with a short bound, so `/health/ready` turns false while
//! one is down and true once it is back (the stages ride the outage out on
//! their own; readiness tells the orchestrator and the operator).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;

use crate::config::KafkaConfig;
use crate::kafka::{self, topic, Names};

/// How long one probe may take before its dependency counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What each probe found.
#[derive(Debug, Clone, Copy)]
pub struct DependencyStatus {
    pub database: bool,
    pub broker: bool,
    pub redis: bool,
}

impl DependencyStatus {
    pub fn all_up(&self) -> bool {
        self.database && self.broker && self.redis
    }
}

/// The clients the probes use; made once, cheap to clone.
#[derive(Clone)]
pub struct Dependencies {
    pool: PgPool,
    redis: redis::aio::ConnectionManager,
    broker: Arc<BaseConsumer>,
    /// A topic of this node: a metadata request for it needs a live broker.
    probe_topic: String,
}

impl Dependencies {
    pub fn new(
        kafka_config: &KafkaConfig,
        names: &Names,
        pool: PgPool,
        redis: redis::aio::ConnectionManager,
    ) -> anyhow::Result<Dependencies> {
        let broker: BaseConsumer = kafka::base_config(kafka_config)
            .set("group.id", names.group("readiness_probe"))
            .create()?;
        Ok(Dependencies {
            pool,
            redis,
            broker: Arc::new(broker),
            probe_topic: names.topic(topic::PAYMENT_ORDER_CREATED),
        })
    }

    /// Asks all three at once; each answer is bounded by `PROBE_TIMEOUT`.
    pub async fn check(&self) -> DependencyStatus {
        let (database, broker, redis) = tokio::join!(self.database(), self.broker(), self.redis());
        DependencyStatus {
            database,
            broker,
            redis,
        }
    }

    async fn database(&self) -> bool {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(tokio::time::timeout(PROBE_TIMEOUT, query).await, Ok(Ok(_)))
    }

    async fn broker(&self) -> bool {
        let (broker, topic) = (self.broker.clone(), self.probe_topic.clone());
        // librdkafka blocks until the broker answers or the timeout.
        tokio::task::spawn_blocking(move || {
            broker
                .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
                .is_ok_and(|m| m.topics().iter().any(|t| t.error().is_none()))
        })
        .await
        .unwrap_or(false)
    }

    async fn redis(&self) -> bool {
        let mut redis = self.redis.clone();
        let ping = redis::cmd("PING");
        let answered = ping.query_async::<String>(&mut redis);
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, answered).await,
            Ok(Ok(_))
        )
    }
}
