//! End-to-end pipeline throughput with the PSP simulator at BEST_PSP_EVER,
//! latency off: M payments × 1 seller posted concurrently to a node running
//! every stage; done when every order has its `ledger_recordings` row.
//!
//! Per-hop latencies come from database timestamps. Each is Postgres `now()`
//! of the writing transaction, i.e. when that transaction *began*:
//!   intake      payments.created_at          (intake transaction)
//!   outbox      outbox_event.sent_at         (dispatcher claim, before the Kafka produce)
//!   claimed     psp_attempts.claimed_at      (executor, before the component call)
//!   psp done    psp_attempts.finished_at     (executor, after the component call)
//!   finalized   payment_orders.updated_at    (result applier's final update)
//!   recorded    ledger_recordings.created_at (ledger consumer transaction)
//!   applied     max(applied_journals.applied_at) of the order's journals (balances)
//!
//! Baseline, same run, same broker: rdkafka alone moving M records from one
//! topic to another with a read_committed consumer and a transactional
//! producer, batches of up to 500, `send_offsets_to_transaction` + commit
//! per batch: the cost of one pipeline hop without any work.
//!
//! Then a paced run at half the measured rate for 10 s reports the same
//! hops under steady load (issue 8's p99 ≤ 1 s goal is for that case).
//!
//! Run: `cargo bench -p paynode-tests --bench pipeline`
//! Env: `PAYNODE_BENCH_PAYMENTS` (2000), `PAYNODE_BENCH_CLIENTS` (32),
//! `PAYNODE_BENCH_POOL` (node pool size; default: test_config's),
//! `PAYNODE_BENCH_WORKERS` (workers per Kafka stage, 1),
//! `PAYNODE_LOG` (default `warn,sqlx=error` here), `PAYNODE_TEST_BROKERS`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paynode_tests::{brokers, payment_body, test_config, TestNode};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

const GOAL_ORDERS_PER_SEC: f64 = 1000.0;
const BATCH: usize = 500;
const WARMUP_PAYMENTS: u64 = 16;
/// Length of the half-rate run.
const PACED_SECS: f64 = 10.0;
/// Issue 8: p99 intake → ledger ≤ 1 s at half the measured rate.
const GOAL_PACED_P99_MS: f64 = 1000.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (p50, p99) of values.
fn p50_p99(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 * q) as usize).min(values.len() - 1)];
    (at(0.5), at(0.99))
}

fn main() -> Result<()> {
    if std::env::var_os("PAYNODE_LOG").is_none() {
        std::env::set_var("PAYNODE_LOG", "warn,sqlx=error");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(170), run())
            .await
            .context("pipeline bench did not finish within 170 s")??;
        let m = env_u64("PAYNODE_BENCH_COMMIT_PAYMENTS", 1000).max(1);
        tokio::time::timeout(Duration::from_secs(120), commits_per_order(m))
            .await
            .context("commit count did not finish within 120 s")?
    })
}

async fn post_payments(
    node: &TestNode,
    run_id: &str,
    buyer: &str,
    count: u64,
    clients: usize,
) -> Result<()> {
    let token = node.token(&["payment:write"]);
    let url = format!("{}/api/v1/payments", node.base);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(20))
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, token, next) = (http.clone(), url.clone(), token.clone(), next.clone());
        let (run_id, buyer) = (run_id.to_string(), buyer.to_string());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                post_one(&http, &url, &token, &buyer, &run_id, i).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("client task panicked")??;
    }
    Ok(())
}

/// Payment `{buyer}-{run_id}-{i}` (its Idempotency-Key too): one of 64
/// sellers, 1000 minor units; an error unless answered 202.
async fn post_one(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    buyer: &str,
    run_id: &str,
    i: u64,
) -> Result<()> {
    let key = format!("{buyer}-{run_id}-{i}");
    let mut body = payment_body(&key, &[(&format!("seller-{}", i % 64), 1000)]);
    body["buyerId"] = buyer.into();
    let response = http
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", &key)
        .json(&body)
        .send()
        .await
        .context("POST /api/v1/payments")?;
    let status = response.status();
    if status.as_u16() != 202 {
        let text = response.text().await.unwrap_or_default();
        bail!("payment {key} answered {status}: {text}");
    }
    response.bytes().await?;
    Ok(())
}

/// Posts `count` payments at a steady `rate` per second (one request per
/// tick, each on its own task so a slow answer does not slow the pace).
async fn post_paced(
    node: &TestNode,
    run_id: &str,
    buyer: &str,
    count: u64,
    rate: f64,
) -> Result<()> {
    let token = node.token(&["payment:write"]);
    let url = format!("{}/api/v1/payments", node.base);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        tick.tick().await;
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        let (buyer, run_id) = (buyer.to_string(), run_id.to_string());
        tasks.spawn(async move { post_one(&http, &url, &token, &buyer, &run_id, i).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("client task panicked")??;
    }
    Ok(())
}

/// Polls `sql` (a count) until it reaches `want`; returns when it did.
async fn wait_count(node: &TestNode, sql: &str, want: i64, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let have: i64 = sqlx::query_scalar(sql).fetch_one(&node.pool).await?;
        if have >= want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            let parked = node
                .scalar("SELECT count(*) FROM payment_orders WHERE status = 'PARKED'")
                .await;
            bail!("timed out after {timeout:?}: `{sql}` = {have}, want {want} ({parked} orders PARKED)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Hops {
    names: [&'static str; 8],
    values: Vec<Vec<f64>>,
}

/// Milliseconds between consecutive timestamps, per measured order.
async fn hop_latencies(node: &TestNode, buyer: &str) -> Result<(Hops, usize)> {
    type Row = (
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT extract(epoch FROM p.created_at)::float8 * 1000,
                extract(epoch FROM ob.sent_at)::float8 * 1000,
                extract(epoch FROM a.claimed_at)::float8 * 1000,
                extract(epoch FROM a.finished_at)::float8 * 1000,
                extract(epoch FROM po.updated_at)::float8 * 1000,
                extract(epoch FROM lr.created_at)::float8 * 1000,
                extract(epoch FROM aj.applied)::float8 * 1000
         FROM payment_orders po
         JOIN payments p ON p.payment_id = po.payment_id
         LEFT JOIN outbox_event ob ON ob.message_key = po.payment_order_id::text
              AND ob.topic = 'payment_order_created_topic'
         LEFT JOIN psp_attempts a ON a.payment_order_id = po.payment_order_id AND a.attempt = 1
         LEFT JOIN ledger_recordings lr ON lr.payment_order_id = po.payment_order_id
         LEFT JOIN (SELECT je.payment_order_id, max(j.applied_at) AS applied
                    FROM journal_entries je JOIN applied_journals j ON j.journal_id = je.journal_id
                    GROUP BY je.payment_order_id) aj ON aj.payment_order_id = po.payment_order_id
         WHERE p.buyer_id = $1",
    )
    .bind(buyer)
    .fetch_all(&node.pool)
    .await?;
    let names = [
        "intake → outbox claimed",
        "outbox → PSP attempt claimed",
        "claimed → PSP call finished",
        "PSP finished → order finalized",
        "finalized → ledger recorded",
        "ledger recorded → balances applied",
        "END-TO-END intake → ledger recorded",
        "END-TO-END intake → balances applied",
    ];
    let mut values = vec![Vec::with_capacity(rows.len()); names.len()];
    for r in &rows {
        let t = [r.0, r.1, r.2, r.3, r.4, r.5, r.6];
        for hop in 0..6 {
            if let (Some(a), Some(b)) = (t[hop], t[hop + 1]) {
                values[hop].push(b - a);
            }
        }
        if let (Some(a), Some(b)) = (t[0], t[5]) {
            values[6].push(b - a);
        }
        if let (Some(a), Some(b)) = (t[0], t[6]) {
            values[7].push(b - a);
        }
    }
    Ok((Hops { names, values }, rows.len()))
}

struct KafkaBaseline {
    moved: usize,
    elapsed: Duration,
    commits: usize,
    commit_ms: (f64, f64),
    produce_per_sec: f64,
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// Produce `m` records, then move them src → dst transactionally.
fn kafka_baseline(
    brokers: &str,
    src: &str,
    dst: &str,
    m: usize,
    payload: &[u8],
    batch_wait: Duration,
) -> Result<KafkaBaseline> {
    let producer: BaseProducer = client(brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let produce_start = Instant::now();
    for i in 0..m {
        let key = format!("k{i}");
        let mut record = BaseRecord::to(src).key(&key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => bail!("producing to {src}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    let produce_per_sec = m as f64 / produce_start.elapsed().as_secs_f64();

    let consumer: BaseConsumer = client(brokers)
        .set("group.id", format!("bench-{}", Uuid::new_v4()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[src])?;
    let mover: BaseProducer = client(brokers)
        .set("transactional.id", format!("bench-{}", Uuid::new_v4()))
        .set("enable.idempotence", "true")
        .create()?;
    let timeout = Duration::from_secs(30);
    mover.init_transactions(timeout)?;

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut moved = 0usize;
    let mut first: Option<Instant> = None;
    let mut commit_ms = Vec::new();
    while moved < m {
        if Instant::now() > deadline {
            bail!("Kafka baseline moved only {moved} of {m} records in 60 s");
        }
        // Like the stage loop: wait for a first record, then up to `batch_wait` more.
        let mut batch = Vec::with_capacity(BATCH);
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let started = Instant::now();
        first.get_or_insert(started);
        batch.push(message?.detach());
        while batch.len() < BATCH {
            let left = batch_wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match consumer.poll(left) {
                Some(message) => batch.push(message?.detach()),
                None => break,
            }
        }
        let commit_start = Instant::now();
        mover.begin_transaction()?;
        let mut next: HashMap<i32, i64> = HashMap::new();
        for message in &batch {
            let mut record = BaseRecord::to(dst).payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            loop {
                match mover.send(record) {
                    Ok(()) => break,
                    Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        mover.poll(Duration::from_millis(5));
                        record = r;
                    }
                    Err((e, _)) => bail!("producing to {dst}: {e}"),
                }
            }
            let entry = next.entry(message.partition()).or_insert(0);
            *entry = (*entry).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in next {
            offsets.add_partition_offset(src, partition, Offset::Offset(offset))?;
        }
        let metadata = consumer
            .group_metadata()
            .context("consumer has no group metadata")?;
        mover.send_offsets_to_transaction(&offsets, &metadata, timeout)?;
        mover.commit_transaction(timeout)?;
        commit_ms.push(commit_start.elapsed().as_secs_f64() * 1000.0);
        moved += batch.len();
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    let commits = commit_ms.len();
    Ok(KafkaBaseline {
        moved,
        elapsed,
        commits,
        commit_ms: p50_p99(&mut commit_ms),
        produce_per_sec,
    })
}

async fn run() -> Result<()> {
    let m = env_u64("PAYNODE_BENCH_PAYMENTS", 2000).max(1);
    let clients = env_u64("PAYNODE_BENCH_CLIENTS", 32).max(1) as usize;
    let mut config = test_config().await;
    if let Ok(pool) = std::env::var("PAYNODE_BENCH_POOL") {
        config.database.max_connections = pool.parse().context("PAYNODE_BENCH_POOL")?;
    }
    let workers = env_u64("PAYNODE_BENCH_WORKERS", 1).max(1) as usize;
    let stages = &mut config.stages;
    stages.payment_order_enqueuer = workers;
    stages.psp_call_executor = workers;
    stages.psp_result_applier = workers;
    stages.ledger_request_dispatcher = workers;
    stages.ledger_recording_consumer = workers;
    stages.account_balance_consumer = workers;
    let pool_size = config.database.max_connections;
    let db_url = config.database.url.clone();
    let prefix = config.kafka.prefix.clone();
    let partitions = config.kafka.partitions;
    let batch_wait = Duration::from_millis(config.kafka.batch_max_wait_ms);
    let stage_batch = config.kafka.batch_max_records;
    let node = TestNode::start(config).await;
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_string();

    // Warm-up: consumer groups join, components instantiate once.
    let warm_start = Instant::now();
    post_payments(&node, &run_id, "warmup", WARMUP_PAYMENTS, 4).await?;
    wait_count(
        &node,
        "SELECT count(*) FROM ledger_recordings",
        WARMUP_PAYMENTS as i64,
        Duration::from_secs(60),
    )
    .await
    .context("warm-up payments never reached the ledger")?;
    let warm_secs = warm_start.elapsed().as_secs_f64();

    // Measured run.
    let started = Instant::now();
    post_payments(&node, &run_id, "bench", m, clients).await?;
    let posted = started.elapsed();
    let done = wait_count(
        &node,
        "SELECT count(*) FROM ledger_recordings",
        (WARMUP_PAYMENTS + m) as i64,
        Duration::from_secs(90),
    )
    .await?;
    let elapsed = done - started;
    let orders_per_sec = m as f64 / elapsed.as_secs_f64();
    let journals_expected = node.scalar("SELECT count(*) FROM journal_entries").await;
    let applied_in_time = wait_count(
        &node,
        "SELECT count(*) FROM applied_journals",
        journals_expected,
        Duration::from_secs(15),
    )
    .await
    .is_ok();
    let (hops, rows) = hop_latencies(&node, "bench").await?;
    let succeeded = node
        .scalar("SELECT count(*) FROM payment_orders po JOIN payments p USING (payment_id) WHERE p.buyer_id = 'bench' AND po.status = 'SUCCEEDED'")
        .await;

    let stage_metrics = node.metrics_text().await;

    // Paced run at half the measured rate: the latency a steady load sees.
    let paced_rate = orders_per_sec / 2.0;
    let paced_count = ((paced_rate * PACED_SECS) as u64).max(1);
    post_paced(&node, &run_id, "paced", paced_count, paced_rate).await?;
    wait_count(
        &node,
        "SELECT count(*) FROM ledger_recordings",
        (WARMUP_PAYMENTS + m + paced_count) as i64,
        Duration::from_secs(60),
    )
    .await
    .context("paced payments never reached the ledger")?;
    let (paced_hops, paced_rows) = hop_latencies(&node, "paced").await?;
    let envelope: Vec<u8> =
        sqlx::query_scalar("SELECT convert_to(envelope::text, 'UTF8') FROM outbox_event LIMIT 1")
            .fetch_one(&node.pool)
            .await?;
    let pool = node.pool.clone();
    node.stop().await;
    pool.close().await;
    drop_database(&db_url).await;

    // Baseline on the same broker, node stopped.
    let brokers = brokers();
    let src = format!("{prefix}bench.src");
    let dst = format!("{prefix}bench.dst");
    let admin: AdminClient<DefaultClientContext> = client(&brokers).create()?;
    let topics = [
        NewTopic::new(&src, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dst, partitions, TopicReplication::Fixed(1)),
    ];
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        if let Err((topic, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating {topic}: {code}");
            }
        }
    }
    let kafka = {
        let (brokers, src, dst, payload) =
            (brokers.clone(), src.clone(), dst.clone(), envelope.clone());
        tokio::task::spawn_blocking(move || {
            kafka_baseline(&brokers, &src, &dst, m as usize, &payload, batch_wait)
        })
        .await??
    };
    let _ = admin
        .delete_topics(&[&src, &dst], &AdminOptions::new())
        .await;
    let kafka_per_sec = kafka.moved as f64 / kafka.elapsed.as_secs_f64();

    // Report.
    println!();
    println!(
        "pipeline: {m} payments × 1 seller, {clients} concurrent clients, psp-simulator BEST_PSP_EVER latency=off, \
         {workers} worker(s) per Kafka stage, node pool {pool_size} connections, {partitions} partitions, batches ≤ {stage_batch} records / {} ms; broker {brokers}; \
         PAYNODE_LOG={}",
        batch_wait.as_millis(),
        std::env::var("PAYNODE_LOG").unwrap_or_default()
    );
    println!(
        "warm-up: {WARMUP_PAYMENTS} payments end to end in {warm_secs:.1} s (consumer groups joining)"
    );
    println!("{}", "-".repeat(92));
    println!(
        "posted {m} payments in {:.2} s ({:.0}/s); all {m} orders ledger-recorded after {:.2} s; {succeeded} SUCCEEDED",
        posted.as_secs_f64(),
        m as f64 / posted.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "orders/s end to end          {orders_per_sec:>9.0}   (goal ≥ {GOAL_ORDERS_PER_SEC:.0}: {})",
        if orders_per_sec >= GOAL_ORDERS_PER_SEC {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!(
        "baseline: rdkafka transactional consume→produce, {} msgs in batches ≤ {BATCH}, {} commits: {kafka_per_sec:>9.0} msgs/s \
         (commit p50 {:.1} ms, p99 {:.1} ms; plain produce {:.0} msgs/s)",
        kafka.moved, kafka.commits, kafka.commit_ms.0, kafka.commit_ms.1, kafka.produce_per_sec
    );
    println!(
        "ratio orders/s ÷ one-hop broker msgs/s = {:.1}%",
        orders_per_sec / kafka_per_sec * 100.0
    );
    println!();
    println!(
        "per-hop latency over {rows} measured orders (ms, from DB transaction-start timestamps){}",
        if applied_in_time {
            ""
        } else {
            "; balances not all applied within 15 s"
        }
    );
    println!(
        "{:<40} {:>8} {:>10} {:>10}",
        "hop", "orders", "p50 ms", "p99 ms"
    );
    println!("{}", "-".repeat(72));
    for (name, values) in hops.names.iter().zip(hops.values) {
        let n = values.len();
        let mut values = values;
        let (p50, p99) = p50_p99(&mut values);
        println!("{name:<40} {n:>8} {p50:>10.1} {p99:>10.1}");
    }
    println!();
    println!("per stage, warm-up + measured run (a batch = decide + produce + commit)");
    println!(
        "{:<40} {:>8} {:>10} {:>12}",
        "stage", "batches", "records", "ms/batch"
    );
    println!("{}", "-".repeat(74));
    for (stage, batches, records, seconds) in stage_table(&stage_metrics) {
        println!(
            "{stage:<40} {batches:>8} {:>10.1} {:>12.1}",
            records / batches.max(1) as f64,
            seconds * 1000.0 / batches.max(1) as f64
        );
    }
    println!();
    println!(
        "paced: {paced_rows} orders at {paced_rate:.0}/s (half the measured rate) for {PACED_SECS:.0} s"
    );
    println!("{}", "-".repeat(72));
    for (name, values) in paced_hops.names.iter().zip(paced_hops.values) {
        let n = values.len();
        let mut values = values;
        let (p50, p99) = p50_p99(&mut values);
        let verdict = if name.starts_with("END-TO-END intake → ledger") {
            if p99 <= GOAL_PACED_P99_MS {
                "   (goal p99 ≤ 1000 ms: MET)"
            } else {
                "   (goal p99 ≤ 1000 ms: MISSED)"
            }
        } else {
            ""
        };
        println!("{name:<40} {n:>8} {p50:>10.1} {p99:>10.1}{verdict}");
    }
    Ok(())
}

/// (stage, batches, records per batch, seconds) from the node's metrics:
/// `pipeline_batch_seconds` count/sum and committed `pipeline_messages_total`.
fn stage_table(metrics: &str) -> Vec<(String, u64, f64, f64)> {
    let value = |prefix: &str, stage: &str, extra: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(prefix)
                    && l.contains(&format!("stage=\"{stage}\""))
                    && l.contains(extra)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut stages: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("pipeline_batch_seconds_count{"))
        .filter_map(|l| Some(l.split("stage=\"").nth(1)?.split('"').next()?.to_string()))
        .collect();
    stages.sort();
    stages.dedup();
    stages
        .into_iter()
        .map(|stage| {
            let batches = value("pipeline_batch_seconds_count{", &stage, "") as u64;
            let records = value("pipeline_messages_total{", &stage, "result=\"committed\"");
            let seconds = value("pipeline_batch_seconds_sum{", &stage, "");
            (stage, batches, records, seconds)
        })
        .collect()
}

/// Postgres commits per order: intake first on an HTTP-only node, then a
/// stages-only node drains the pipeline (outbox → ledger → balances). Both
/// figures come from `pg_stat_database.xact_commit` of the test database,
/// read on a fresh connection after the node stopped (its backends flush
/// their statistics when they exit); the bench's own polls are subtracted.
/// Everything the stages node does counts, background work included.
async fn commits_per_order(m: u64) -> Result<()> {
    let base = test_config().await;
    let db_url = base.database.url.clone();
    let mut intake = base.clone();
    let s = &mut intake.stages;
    (
        s.outbox_dispatcher,
        s.payment_order_enqueuer,
        s.psp_call_executor,
    ) = (0, 0, 0);
    (s.psp_result_applier, s.ledger_request_dispatcher) = (0, 0);
    (
        s.ledger_recording_consumer,
        s.account_balance_consumer,
        s.retry_scheduler,
    ) = (0, 0, 0);
    let start = xact_commit(&db_url).await?;
    let node = TestNode::start(intake).await;
    post_payments(&node, "commits", "commits", m, 32).await?;
    stop(node).await;
    let after_intake = xact_commit(&db_url).await?;

    // The API stays on (the test node needs its address) but takes no
    // request, so it adds no commit.
    let node_started = Instant::now();
    let node = TestNode::start(base.clone()).await;
    let probe = sqlx::PgPool::connect(&db_url).await?;
    let mut polls = 0i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        polls += 1;
        let (recorded, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ledger_recordings),
                    (SELECT count(*) FROM journal_entries j WHERE NOT EXISTS (SELECT 1 FROM applied_journals a WHERE a.journal_id = j.journal_id))",
        )
        .fetch_one(&probe)
        .await?;
        if recorded >= m as i64 && pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("stages node did not drain: {recorded} of {m} recorded, {pending} journals unapplied");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe.close().await;
    let busy = node_started.elapsed();
    stop(node).await;
    let end = xact_commit(&db_url).await?;
    // One commit for each earlier read, and the polls.
    let intake_commits = after_intake - start - 1;
    let stage_commits = end - after_intake - 1 - polls;

    // The same node idle for as long: start-up, janitor, reconcile, sweeps.
    let idle_started = Instant::now();
    let node = TestNode::start(base).await;
    tokio::time::sleep(busy.saturating_sub(idle_started.elapsed())).await;
    stop(node).await;
    let idle_commits = xact_commit(&db_url).await? - end - 1;
    drop_database(&db_url).await;
    println!();
    println!("Postgres commits ({m} payments × 1 order; pg_stat_database.xact_commit, node start included):");
    println!(
        "  intake (HTTP-only node)        {intake_commits:>7}  = {:.2} per payment",
        intake_commits as f64 / m as f64
    );
    println!(
        "  stages after intake            {stage_commits:>7}  = {:.3} per order (node start and background work included)",
        stage_commits as f64 / m as f64
    );
    println!(
        "  the same node idle as long     {idle_commits:>7}  ({:.1} s: start-up, janitor, sweeps)",
        busy.as_secs_f64()
    );
    let net = (stage_commits - idle_commits).max(0);
    let per_order = net as f64 / m as f64;
    println!(
        "  caused by the orders           {net:>7}  = {per_order:.3} per order (goal ≤ 0.2: {})",
        if per_order <= 0.2 { "MET" } else { "MISSED" }
    );
    Ok(())
}

async fn stop(node: TestNode) {
    let pool = node.pool.clone();
    node.stop().await;
    pool.close().await;
    // Let the closed backends' statistics land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn xact_commit(db_url: &str) -> Result<i64> {
    let pool = sqlx::PgPool::connect(db_url).await?;
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(commits)
}

async fn drop_database(db_url: &str) {
    let Some(name) = db_url.rsplit('/').next() else {
        return;
    };
    if let Ok(admin) = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}
