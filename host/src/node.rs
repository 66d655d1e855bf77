//! Wires a node together: database, broker topics, Redis, component
//! registry, pipeline stages, the HTTP API and background gauges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, auth::Authenticator, AppState};
use crate::balance_cache::BalanceCache;
use crate::components::registry::Registry;
use crate::components::Runtime;
use crate::config::Config;
use crate::kafka::{self, topic, Names};
use crate::pipeline::{self, PipelineContext};
use crate::retry_queue::RetryQueue;
use crate::store;

/// A running node. Dropping it does not stop it; call `stop`.
pub struct RunningNode {
    /// Where the HTTP API listens (if enabled).
    pub addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    pub pool: sqlx::PgPool,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl RunningNode {
    /// Stops consuming, lets in-flight batches finish, then returns.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("some tasks did not stop in time; aborting them");
            self.tasks.abort_all();
        }
    }

    /// Waits until a task fails (a fatal worker error) or shutdown.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(join_error) if join_error.is_panic() => {
                    anyhow::bail!("a task panicked: {join_error}")
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Connects, migrates, creates topics, loads components and starts every
/// configured stage and the API.
pub async fn start(config: Config) -> anyhow::Result<RunningNode> {
    let config = Arc::new(config);
    let metrics = crate::metrics::install();
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    kafka::create_topics(&config.kafka)
        .await
        .context("creating Kafka topics")?;
    let redis_client = redis::Client::open(config.redis.url.as_str()).context("redis.url")?;
    let redis = redis::aio::ConnectionManager::new(redis_client)
        .await
        .context("connecting to Redis")?;
    let names = Names::new(&config.kafka.prefix);

    let runtime = Runtime::new(Some(config.components.cache_dir.clone()))?;
    let registry = Registry::new(runtime, pool.clone(), config.clone());
    registry.bootstrap(&config.components.dir).await?;
    registry.refresh().await?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    registry.spawn_watcher(shutdown.clone());
    let ctx = PipelineContext {
        config: config.clone(),
        names: names.clone(),
        pool: pool.clone(),
        retry_queue: RetryQueue::new(redis.clone(), &names),
        redis: redis.clone(),
        registry: registry.clone(),
    };
    pipeline::spawn_all(&ctx, &mut tasks, &shutdown);
    tasks.spawn(gauges(ctx.clone(), shutdown.clone()));

    let mut addr = None;
    if config.stages.http {
        let state = AppState {
            config: config.clone(),
            pool: pool.clone(),
            auth: Arc::new(Authenticator::new(&config.auth)),
            metrics,
            registry: registry.clone(),
            balance_cache: BalanceCache::new(redis.clone(), &names),
            // Its writers end after the server below has drained.
            intake: crate::intake::Intake::start(pool.clone(), &config, &mut tasks),
        };
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("binding {}", config.http.listen))?;
        addr = Some(listener.local_addr()?);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, api::app(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .context("HTTP server")
        });
    }
    tracing::info!(?addr, prefix = %config.kafka.prefix, "paynode started");
    Ok(RunningNode {
        addr,
        registry,
        pool,
        shutdown,
        tasks,
    })
}

/// Gauges that need polling: outbox backlog and consumer-group lag.
async fn gauges(ctx: PipelineContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    let groups = [
        ("payment_order_enqueuer", topic::PAYMENT_ORDER_CREATED),
        ("payment_order_psp_call_executor", topic::PSP_CALL_REQUESTED),
        (
            "payment_order_psp_result_applier",
            topic::PSP_RESULT_UPDATED,
        ),
        (
            "ledger_recording_request_dispatcher",
            topic::PAYMENT_ORDER_FINALIZED,
        ),
        ("ledger_recording_consumer", topic::LEDGER_RECORD_REQUEST),
        ("account_balance_consumer", topic::LEDGER_ENTRIES_RECORDED),
    ];
    let mut round: u64 = 0;
    loop {
        // The periodic reconciliation (every ~minute), as gauges for alerts.
        if round.is_multiple_of(12) {
            match crate::cli::reconcile::checks(&ctx.pool, 300).await {
                Ok(checks) => {
                    for check in checks {
                        crate::metrics::reconcile_breaches(check.name, check.breaches);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "periodic reconciliation failed")
                }
            }
        }
        round += 1;
        if let Ok(backlog) = store::outbox::backlog(&ctx.pool).await {
            crate::metrics::outbox_backlog(backlog);
        }
        let kafka = ctx.config.kafka.clone();
        let names = ctx.names.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (stage, base) in groups {
                let group = names.group(stage);
                if let Err(error) = record_lag(&kafka, &group, &names.topic(base)) {
                    tracing::debug!(%error, group, "lag probe failed");
                }
            }
        })
        .await;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

fn record_lag(config: &crate::config::KafkaConfig, group: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka::base_config(config).set("group.id", group).create()?;
    let timeout = Duration::from_secs(2);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
        let position = element.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
        crate::metrics::consumer_lag(group, topic, element.partition(), (high - position).max(0));
    }
    Ok(())
}
