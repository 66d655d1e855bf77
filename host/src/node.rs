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
use crate::components::{Runtime, Slot};
use crate::config::Config;
use crate::kafka::{self, topic, Names};
use crate::pipeline::{self, PipelineContext};
use crate::retry_queue::RetryQueue;
use crate::store;

/// A running node. Dropping it does not stop it; call `stop`.
pub struct RunningNode {
    /// Where the HTTP API listens (if enabled).
    pub addr: Option<SocketAddr>,
    /// Where the operations listener (`ops.listen`) serves `/metrics` and
    /// the detailed readiness, if configured.
    pub ops_addr: Option<SocketAddr>,
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
    // Also here, not only in `Config::load`: embedders (tests, benches)
    // build configs in code, and an invalid one must not serve either.
    config.validate().context("invalid configuration")?;
    // Before any connection is opened: a refused one never carries a byte.
    crate::transport::enforce(&config)?;
    let config = Arc::new(config);
    let metrics = crate::metrics::install();
    let pool = store::connect(&config.database).await?;
    store::migrate(&pool).await?;
    kafka::create_topics(&config.kafka)
        .await
        .context("creating Kafka topics")?;
    let redis_client = redis::Client::open(config.redis.url.as_str()).context("redis.url")?;
    let redis = redis::aio::ConnectionManager::new_with_config(redis_client, redis_reconnect())
        .await
        .context("connecting to Redis")?;
    let names = Names::new(&config.kafka.prefix);

    let runtime = Runtime::new(Some(config.components.cache_dir.clone()))?;
    let registry = Registry::new(runtime, pool.clone(), config.clone());
    registry.bootstrap(&config.components.dir).await?;
    registry.refresh().await?;
    refuse_simulator_in_production(&config, &registry)?;

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

    let dependencies =
        crate::health::Dependencies::new(&config.kafka, &names, pool.clone(), redis.clone())?;
    let ops = api::OpsState {
        pool: pool.clone(),
        metrics,
        registry: registry.clone(),
        dependencies: dependencies.clone(),
    };
    let ops_addr = serve_ops(&config, ops.clone(), &mut tasks, &shutdown).await?;
    let mut addr = None;
    if config.stages.http {
        let auth = Authenticator::new(&config.auth);
        auth.warm_up().await;
        let state = AppState {
            config: config.clone(),
            pool: pool.clone(),
            auth: Arc::new(auth),
            metrics: ops.metrics,
            registry: registry.clone(),
            balance_cache: BalanceCache::new(redis.clone(), &names, pool.clone(), &config.redis),
            // Its writers end after the server below has drained.
            intake: crate::intake::Intake::start(pool.clone(), &config, &mut tasks),
            dependencies,
        };
        tasks.spawn(crate::intake::retention::run(
            pool.clone(),
            config.intake.clone(),
            shutdown.clone(),
        ));
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
    tracing::info!(?addr, ?ops_addr, prefix = %config.kafka.prefix, "paynode started");
    Ok(RunningNode {
        addr,
        ops_addr,
        registry,
        pool,
        shutdown,
        tasks,
    })
}

/// The operations listener (`ops.listen`), whatever stages run here: a
/// stage-only pod still needs its metrics and probes.
async fn serve_ops(
    config: &Config,
    state: api::OpsState,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(listen) = &config.ops.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding ops.listen {listen}"))?;
    let addr = listener.local_addr()?;
    let app = api::ops_app(state, Duration::from_millis(config.http.request_timeout_ms));
    let stop = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("ops HTTP server")
    });
    Ok(Some(addr))
}

/// How the Redis connection comes back after Redis restarts. The crate's
/// defaults hand backon a factor of 100 over a 1 s minimum delay, so the
/// second reconnect attempt waits a minute and commands hang meanwhile
/// (measured: no PING answered for 30 s after a restart). Attempts every
/// second at most instead, each connect and reply bounded; once the
/// attempts are spent, the next command starts a new round.
fn redis_reconnect() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_factor(2)
        .set_max_delay(1_000)
        .set_number_of_retries(6)
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(5))
}

/// Component name of the PSP simulator adapter (`psp-adapters/simulator`).
pub const SIMULATOR_COMPONENT: &str = "psp-simulator";

/// The simulator approves every charge without moving money: a production
/// node left on the default adapter would "sell" for free. Outside dev mode
/// the PSP stage does not start on it unless `psp.allow_simulator` says so.
fn refuse_simulator_in_production(config: &Config, registry: &Registry) -> anyhow::Result<()> {
    if config.stages.psp_call_executor == 0 || config.auth.dev || config.psp.allow_simulator {
        return Ok(());
    }
    let Ok(active) = registry.active(Slot::PspAdapter) else {
        return Ok(());
    };
    if active.loaded.name == SIMULATOR_COMPONENT {
        anyhow::bail!(
            "the active psp-adapter is the simulator ({SIMULATOR_COMPONENT}); outside dev mode \
             the PSP stage refuses it: activate a real adapter, set psp.allow_simulator = true, \
             or run in dev mode (--dev)"
        );
    }
    Ok(())
}

/// Gauges that need polling: outbox backlog, the periodic reconciliation
/// and (on a thread of its own) consumer-group lag.
async fn gauges(ctx: PipelineContext, shutdown: CancellationToken) -> anyhow::Result<()> {
    spawn_lag_probe(&ctx, shutdown.clone());
    let mut round: u64 = 0;
    loop {
        // The periodic reconciliation (every ~minute), as gauges for alerts.
        if round.is_multiple_of(12) {
            if let Err(error) = reconcile_as_leader(&ctx.pool).await {
                tracing::warn!(error = %format!("{error:#}"), "periodic reconciliation failed")
            }
        }
        round += 1;
        if let Ok(backlog) = store::outbox::backlog(&ctx.pool).await {
            crate::metrics::outbox_backlog(backlog);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Any key will do as long as every node uses the same one.
const RECONCILE_LOCK: i64 = 0x7061_796e_6f64_6501;
/// How far back each round looks past where the last one stopped: a
/// transaction is stamped when it begins and seen when it commits.
const RECONCILE_MARGIN_SECS: i64 = 300;

/// One node at a time runs the checks: the one that gets the advisory lock
/// for this round (the others skip it; their gauges keep the last values).
/// Rounds are incremental (`store::reconcile::incremental`): their cost
/// follows the write rate, not the ledger's size.
async fn reconcile_as_leader(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut lock = pool.begin().await?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RECONCILE_LOCK)
        .fetch_one(&mut *lock)
        .await?;
    let result = if leader {
        store::reconcile::incremental(pool, 300, RECONCILE_MARGIN_SECS)
            .await
            .map(|checks| {
                for check in checks {
                    crate::metrics::reconcile_breaches(check.name, check.breaches);
                }
            })
    } else {
        Ok(())
    };
    lock.commit().await?;
    result
}

/// Consumer-group lag every 5 s, from one probe consumer per group made
/// once (not a fresh client per probe).
fn spawn_lag_probe(ctx: &PipelineContext, shutdown: CancellationToken) {
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
        ("refund_executor", topic::REFUND_REQUESTED),
        ("refund_ledger_recorder", topic::REFUND_FINALIZED),
    ];
    let kafka = ctx.config.kafka.clone();
    let names = ctx.names.clone();
    std::thread::spawn(move || {
        let probes: Vec<(String, String, BaseConsumer)> = groups
            .iter()
            .filter_map(|(stage, base)| {
                let group = names.group(stage);
                let consumer = kafka::base_config(&kafka)
                    .set("group.id", &group)
                    .create()
                    .ok()?;
                Some((group, names.topic(base), consumer))
            })
            .collect();
        while !shutdown.is_cancelled() {
            for (group, topic, consumer) in &probes {
                if let Err(error) = record_lag(consumer, group, topic) {
                    tracing::debug!(%error, group, "lag probe failed");
                }
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
}

fn record_lag(consumer: &BaseConsumer, group: &str, topic: &str) -> anyhow::Result<()> {
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
