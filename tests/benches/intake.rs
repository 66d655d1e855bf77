//! Intake throughput: `POST /api/v1/payments` against an in-process node
//! whose pipeline stages are all disabled (only the HTTP intake runs), driven
//! by N concurrent clients with unique Idempotency-Keys and orderIds, 2
//! sellers per payment.
//!
//! Baseline, same run, same database, same client count and duration:
//! pgbench replaying intake's statements (advisory lock, idempotency lookup,
//! payment row, 2 payment_orders, 2 outbox rows, 1 idempotency row) in one
//! transaction, with the JSON documents intake actually wrote. Falls back to
//! the same statements through sqlx if `pgbench` is not installed.
//!
//! Run: `cargo bench -p paynode-tests --bench intake`
//! Env: `PAYNODE_BENCH_CLIENTS` (32), `PAYNODE_BENCH_SECS` (10),
//! `PAYNODE_BENCH_POOL` (node pool size; default: test_config's),
//! `PAYNODE_LOG` (default `warn,sqlx=error` here: the node logs one JSON line per
//! payment at `info`).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paynode::config::StagesConfig;
use paynode_tests::{payment_body, test_config, TestNode};
use uuid::Uuid;

const GOAL_RATIO: f64 = 0.60;
const GOAL_PER_SEC: f64 = 3000.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (p50, p99) in ms of nanosecond samples.
fn p50_p99(samples: &mut [u64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i] as f64 / 1e6
    };
    (at(0.5), at(0.99))
}

#[derive(Default)]
struct ClientResult {
    latencies_ns: Vec<u64>,
    other_status: Vec<u16>,
    errors: Vec<String>,
}

struct Baseline {
    tool: &'static str,
    tps: f64,
    latency_ms: String,
    failures: u64,
}

fn main() -> Result<()> {
    if std::env::var_os("PAYNODE_LOG").is_none() {
        // Before any thread starts: the node reads it when it installs logging.
        std::env::set_var("PAYNODE_LOG", "warn,sqlx=error");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(150), run())
            .await
            .context("intake bench did not finish within 150 s")?
    })
}

async fn run() -> Result<()> {
    let clients = env_u64("PAYNODE_BENCH_CLIENTS", 32).max(1) as usize;
    let secs = env_u64("PAYNODE_BENCH_SECS", 10).max(1);
    let warmup = Duration::from_secs(1);

    let mut config = test_config().await;
    config.stages = StagesConfig {
        http: true,
        outbox_dispatcher: 0,
        payment_order_enqueuer: 0,
        psp_call_executor: 0,
        psp_result_applier: 0,
        retry_scheduler: 0,
        ledger_request_dispatcher: 0,
        ledger_recording_consumer: 0,
        account_balance_consumer: 0,
        ..StagesConfig::default()
    };
    if let Ok(pool) = std::env::var("PAYNODE_BENCH_POOL") {
        config.database.max_connections = pool.parse().context("PAYNODE_BENCH_POOL")?;
    }
    let db_url = config.database.url.clone();
    let pool_size = config.database.max_connections;
    let node = TestNode::start(config).await;

    // --- intake -----------------------------------------------------------
    let token = node.token(&["payment:write"]);
    let url = format!("{}/api/v1/payments", node.base);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(10))
        .build()?;
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_string();
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, token, run_id, counter) = (
            http.clone(),
            url.clone(),
            token.clone(),
            run_id.clone(),
            counter.clone(),
        );
        tasks.spawn(async move {
            let mut result = ClientResult::default();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let key = format!("bench-{run_id}-{i}");
                let body = serde_json::to_vec(&payment_body(
                    &format!("order-{run_id}-{i}"),
                    &[("seller-a", 1500), ("seller-b", 500)],
                ))
                .expect("json");
                let t0 = Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                let outcome = match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(_) => Ok(status),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let done = Instant::now();
                if done < measure_from || done > end {
                    continue;
                }
                match outcome {
                    Ok(202) => result.latencies_ns.push((done - t0).as_nanos() as u64),
                    Ok(status) => result.other_status.push(status),
                    Err(e) => result.errors.push(e),
                }
            }
            result
        });
    }
    let mut latencies = Vec::new();
    let mut other_status = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let r = joined.context("client task panicked")?;
        latencies.extend(r.latencies_ns);
        other_status.extend(r.other_status);
        errors.extend(r.errors);
    }
    let accepted = latencies.len();
    let intake_per_sec = accepted as f64 / secs as f64;
    let (p50, p99) = p50_p99(&mut latencies);
    let stored_payments = node.scalar("SELECT count(*) FROM payments").await;
    let stored_orders = node.scalar("SELECT count(*) FROM payment_orders").await;
    let stored_outbox = node.scalar("SELECT count(*) FROM outbox_event").await;

    // Real documents intake wrote, so the baseline writes the same bytes.
    let envelope: String = sqlx::query_scalar("SELECT envelope::text FROM outbox_event LIMIT 1")
        .fetch_one(&node.pool)
        .await
        .context("no outbox row: intake accepted nothing")?;
    let view: String =
        sqlx::query_scalar("SELECT response_body::text FROM idempotency_keys LIMIT 1")
            .fetch_one(&node.pool)
            .await?;
    let pool = node.pool.clone();
    node.stop().await;
    pool.close().await;

    // --- baseline -----------------------------------------------------------
    let scratch = std::env::temp_dir().join(format!("paynode-bench-intake-{run_id}"));
    std::fs::create_dir_all(&scratch)?;
    let baseline = match which("pgbench") {
        Some(pgbench) => {
            pgbench_baseline(&pgbench, &scratch, &db_url, clients, secs, &envelope, &view).await?
        }
        None => sqlx_baseline(&db_url, clients, secs, &envelope, &view).await?,
    };
    let _ = std::fs::remove_dir_all(&scratch);
    drop_database(&db_url).await;

    // --- report -------------------------------------------------------------
    let ratio = intake_per_sec / baseline.tps;
    println!();
    println!(
        "intake: POST /api/v1/payments, 2 sellers per payment, {clients} concurrent clients, \
         {secs} s measured after {} s warm-up; node pool {pool_size} connections; \
         all pipeline stages off; PAYNODE_LOG={}",
        warmup.as_secs(),
        std::env::var("PAYNODE_LOG").unwrap_or_default()
    );
    println!("{}", "-".repeat(100));
    println!(
        "{:<52} {:>12} {:>14} {:>14}",
        "", "per second", "p50 ms", "p99 ms"
    );
    println!(
        "{:<52} {:>12.0} {:>14.2} {:>14.2}",
        "intake (202 Accepted)", intake_per_sec, p50, p99
    );
    println!(
        "{:<52} {:>12.0} {:>29}",
        format!("baseline: {} (same SQL, {clients} clients)", baseline.tool),
        baseline.tps,
        format!("avg {} ms", baseline.latency_ms)
    );
    println!("{}", "-".repeat(100));
    println!(
        "ratio intake / baseline = {:.1}%   (goal ≥ {:.0}%: {})",
        ratio * 100.0,
        GOAL_RATIO * 100.0,
        if ratio >= GOAL_RATIO { "MET" } else { "MISSED" }
    );
    println!(
        "intake rate = {intake_per_sec:.0}/s           (goal ≥ {GOAL_PER_SEC:.0}/s: {})",
        if intake_per_sec >= GOAL_PER_SEC {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!(
        "non-202 answers: {} {:?}; transport errors: {}{}; baseline failed transactions: {}",
        other_status.len(),
        summarize_statuses(&other_status),
        errors.len(),
        errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        baseline.failures
    );
    println!(
        "stored by intake (incl. warm-up): {stored_payments} payments, {stored_orders} payment_orders, \
         {stored_outbox} outbox rows"
    );
    if accepted == 0 {
        bail!("intake accepted no payment in the measured window");
    }
    Ok(())
}

fn summarize_statuses(statuses: &[u16]) -> Vec<(u16, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(*s).or_insert(0usize) += 1;
    }
    counts.into_iter().collect()
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/lib/postgresql/15/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Intake's statements, in intake's order, one transaction per payment.
/// `:r` is a random 63-bit number that derives every id of the payment.
const PGBENCH_SCRIPT: &str = r#"\set r random(1, 9000000000000000000)
BEGIN;
SELECT pg_try_advisory_xact_lock(CAST(:r AS bigint));
SELECT request_sha256, response_status, response_body FROM idempotency_keys WHERE client_id = 'pgbench' AND idempotency_key = 'k' || :r;
INSERT INTO payments (payment_id, client_id, buyer_id, order_id, total_amount_minor, currency, trace_id) VALUES (md5('p' || :r)::uuid, 'pgbench', 'buyer-1', 'o' || :r, 2000, 'EUR', md5('t' || :r)) ON CONFLICT ON CONSTRAINT payments_client_order_unique DO NOTHING;
INSERT INTO payment_orders (payment_order_id, payment_id, seller_id, amount_minor, currency, psp_idempotency_key) VALUES (md5('a' || :r)::uuid, md5('p' || :r)::uuid, 'seller-a', 1500, 'EUR', 'paynode-' || md5('a' || :r)), (md5('b' || :r)::uuid, md5('p' || :r)::uuid, 'seller-b', 500, 'EUR', 'paynode-' || md5('b' || :r));
INSERT INTO outbox_event (event_id, topic, message_key, envelope) VALUES (md5('e' || :r)::uuid, 'payment_order_created_topic', md5('a' || :r)::uuid::text, CAST(:env AS jsonb)), (md5('f' || :r)::uuid, 'payment_order_created_topic', md5('b' || :r)::uuid::text, CAST(:env AS jsonb));
INSERT INTO idempotency_keys (client_id, idempotency_key, request_sha256, payment_id, response_status, response_body) VALUES ('pgbench', 'k' || :r, encode(sha256(('q' || :r)::bytea), 'hex'), md5('p' || :r)::uuid, 202, CAST(:view AS jsonb));
COMMIT;
"#;

async fn pgbench_baseline(
    pgbench: &Path,
    scratch: &Path,
    db_url: &str,
    clients: usize,
    secs: u64,
    envelope: &str,
    view: &str,
) -> Result<Baseline> {
    let script = scratch.join("intake.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let threads = clients.min(2);
    let child = tokio::process::Command::new(pgbench)
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &secs.to_string()])
        .arg("-f")
        .arg(&script)
        .arg("-D")
        .arg(format!("env={envelope}"))
        .arg("-D")
        .arg(format!("view={view}"))
        .arg(db_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", pgbench.display()))?;
    let output = tokio::time::timeout(Duration::from_secs(secs + 60), child.wait_with_output())
        .await
        .context("pgbench did not finish in time")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("pgbench failed ({}):\n{stdout}\n{stderr}", output.status);
    }
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .map(str::to_string)
    };
    let tps = field("tps =")
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output:\n{stdout}"))?;
    let latency_ms = field("latency average =")
        .map(|l| l.trim_end_matches(" ms").to_string())
        .unwrap_or_else(|| "?".into());
    let failures = field("number of failed transactions:")
        .and_then(|f| f.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(Baseline {
        tool: "pgbench -M prepared",
        tps,
        latency_ms,
        failures,
    })
}

/// The same statements through sqlx, for machines without pgbench.
async fn sqlx_baseline(
    db_url: &str,
    clients: usize,
    secs: u64,
    envelope: &str,
    view: &str,
) -> Result<Baseline> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(clients as u32)
        .connect(db_url)
        .await?;
    let end = Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let latency_sum = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (pool, done, latency_sum) = (pool.clone(), done.clone(), latency_sum.clone());
        let (envelope, view) = (envelope.to_string(), view.to_string());
        tasks.spawn(async move {
            while Instant::now() < end {
                let t0 = Instant::now();
                let r: i64 = rand_i63();
                let mut tx = pool.begin().await?;
                for statement in PGBENCH_SCRIPT
                    .lines()
                    .filter(|l| !l.starts_with('\\') && *l != "BEGIN;" && *l != "COMMIT;")
                {
                    // At most one JSON document per statement: it is $2.
                    let document = if statement.contains(":env") {
                        Some(&envelope)
                    } else if statement.contains(":view") {
                        Some(&view)
                    } else {
                        None
                    };
                    let sql = statement
                        .replace(":r", "$1")
                        .replace(":env", "$2")
                        .replace(":view", "$2");
                    let mut query = sqlx::query(&sql).bind(r.to_string());
                    if let Some(document) = document {
                        query = query.bind(document);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
                latency_sum.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    pool.close().await;
    let n = done.load(Ordering::Relaxed);
    Ok(Baseline {
        tool: "sqlx (pgbench not installed)",
        tps: n as f64 / secs as f64,
        latency_ms: format!(
            "{:.2}",
            latency_sum.load(Ordering::Relaxed) as f64 / n.max(1) as f64 / 1000.0
        ),
        failures: 0,
    })
}

fn rand_i63() -> i64 {
    (Uuid::new_v4().as_u128() as i64) & i64::MAX
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
