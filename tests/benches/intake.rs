//! Intake throughput: `POST /api/v1/payments` against an in-process node
//! whose pipeline stages are all disabled (only the HTTP intake runs), driven
//! by N concurrent clients with unique Idempotency-Keys and orderIds, 2
//! sellers per payment. Then a paced (open-loop) run at 80 % of the measured
//! peak shows the latency a node has under steady, not saturating, load.
//!
//! Baseline, same run, same database: pgbench replaying intake's per-request
//! statements (advisory lock, idempotency lookup, payment row, 2
//! payment_orders, 2 outbox rows, 1 idempotency row) in one transaction per
//! payment, with the JSON documents intake actually wrote, at 4, 8, 16 and
//! 32 clients; the best rate is the one to beat (goal: 1.5×, which only
//! group commit can reach). Falls back to the same statements through sqlx
//! if `pgbench` is not installed.
//!
//! Run: `cargo bench -p paynode-tests --bench intake`
//! Env: `PAYNODE_BENCH_CLIENTS` (32), `PAYNODE_BENCH_SECS` (10),
//! `PAYNODE_BENCH_PACED_SECS` (5), `PAYNODE_BENCH_PGBENCH_SECS` (5 per
//! client count), `PAYNODE_BENCH_POOL` (node pool size; default:
//! test_config's), `PAYNODE_LOG` (default `warn,sqlx=error` here: the node
//! logs one JSON line per payment at `info`).

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paynode::config::StagesConfig;
use paynode_tests::{payment_body, test_config, TestNode};
use uuid::Uuid;

/// Intake must beat one-transaction-per-request by this factor.
const GOAL_RATIO: f64 = 1.5;
/// p99 bound for the paced run at `PACED_SHARE` of the peak.
const GOAL_PACED_P99_MS: f64 = 25.0;
const PACED_SHARE: f64 = 0.8;
/// pgbench client counts; the best one is the baseline.
const PGBENCH_CLIENTS: [usize; 4] = [4, 8, 16, 32];

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

/// Answers of one run: 202 latencies, other statuses, transport errors.
#[derive(Default)]
struct Answers {
    latencies_ns: Vec<u64>,
    other_status: Vec<u16>,
    errors: Vec<String>,
}

impl Answers {
    fn record(&mut self, outcome: Result<u16, String>, latency: Duration) {
        match outcome {
            Ok(202) => self.latencies_ns.push(latency.as_nanos() as u64),
            Ok(status) => self.other_status.push(status),
            Err(e) => self.errors.push(e),
        }
    }

    fn merge(&mut self, other: Answers) {
        self.latencies_ns.extend(other.latencies_ns);
        self.other_status.extend(other.other_status);
        self.errors.extend(other.errors);
    }

    fn summary(&self) -> String {
        format!(
            "non-202 answers: {} {:?}; transport errors: {}{}",
            self.other_status.len(),
            summarize_statuses(&self.other_status),
            self.errors.len(),
            self.errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        )
    }
}

struct Baseline {
    tool: &'static str,
    clients: usize,
    tps: f64,
    latency_ms: String,
    failures: u64,
}

/// Where and as whom the load generator posts.
#[derive(Clone)]
struct Target {
    http: reqwest::Client,
    url: String,
    token: String,
    run_id: String,
}

impl Target {
    /// Payment number `i` of `phase` (unique key and orderId); its status or
    /// a transport error.
    async fn post(&self, phase: &str, i: u64) -> Result<u16, String> {
        let key = format!("bench-{}-{phase}-{i}", self.run_id);
        let body = serde_json::to_vec(&payment_body(
            &format!("order-{}-{phase}-{i}", self.run_id),
            &[("seller-a", 1500), ("seller-b", 500)],
        ))
        .expect("json");
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", &key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        response.bytes().await.map_err(|e| e.to_string())?;
        Ok(status)
    }
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
        tokio::time::timeout(Duration::from_secs(300), run())
            .await
            .context("intake bench did not finish within 300 s")?
    })
}

/// `clients` closed-loop clients for `warmup` + `measured`; answers that
/// complete inside the measured window count.
async fn burst(target: &Target, clients: usize, warmup: Duration, measured: Duration) -> Answers {
    let counter = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + warmup;
    let end = measure_from + measured;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (target, counter) = (target.clone(), counter.clone());
        tasks.spawn(async move {
            let mut answers = Answers::default();
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let outcome = target.post("burst", i).await;
                let done = Instant::now();
                if done >= measure_from && done <= end {
                    answers.record(outcome, done - t0);
                }
            }
            answers
        });
    }
    let mut all = Answers::default();
    while let Some(joined) = tasks.join_next().await {
        all.merge(joined.expect("client task panicked"));
    }
    all
}

/// Open loop: one request per tick at `rate`/s for `measured`, each on its
/// own task, so a slow answer never slows the pace (no coordinated omission).
async fn paced(target: &Target, rate: f64, measured: Duration) -> Answers {
    let count = (rate * measured.as_secs_f64()) as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        tick.tick().await;
        let target = target.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let outcome = target.post("paced", i).await;
            (outcome, t0.elapsed())
        });
    }
    let mut all = Answers::default();
    while let Some(joined) = tasks.join_next().await {
        let (outcome, latency) = joined.expect("request task panicked");
        all.record(outcome, latency);
    }
    all
}

async fn run() -> Result<()> {
    let clients = env_u64("PAYNODE_BENCH_CLIENTS", 32).max(1) as usize;
    let secs = env_u64("PAYNODE_BENCH_SECS", 10).max(1);
    let paced_secs = env_u64("PAYNODE_BENCH_PACED_SECS", 5).max(1);
    let pgbench_secs = env_u64("PAYNODE_BENCH_PGBENCH_SECS", 5).max(1);
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

    // --- intake: burst, then paced at 80 % of its rate ------------------------
    let target = Target {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(10))
            .build()?,
        url: format!("{}/api/v1/payments", node.base),
        token: node.token(&["payment:write"]),
        run_id: Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    let mut peak = burst(&target, clients, warmup, Duration::from_secs(secs)).await;
    let intake_per_sec = peak.latencies_ns.len() as f64 / secs as f64;
    let (p50, p99) = p50_p99(&mut peak.latencies_ns);
    let paced_rate = (intake_per_sec * PACED_SHARE).max(1.0);
    let mut steady = paced(&target, paced_rate, Duration::from_secs(paced_secs)).await;
    let steady_per_sec = steady.latencies_ns.len() as f64 / paced_secs as f64;
    let (paced_p50, paced_p99) = p50_p99(&mut steady.latencies_ns);
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

    // --- baseline: one transaction per payment, best of 4..32 clients --------
    let scratch = std::env::temp_dir().join(format!("paynode-bench-intake-{}", target.run_id));
    std::fs::create_dir_all(&scratch)?;
    let mut baselines = Vec::new();
    for baseline_clients in PGBENCH_CLIENTS {
        let baseline = match which("pgbench") {
            Some(pgbench) => {
                pgbench_baseline(
                    &pgbench,
                    &scratch,
                    &db_url,
                    baseline_clients,
                    pgbench_secs,
                    &envelope,
                    &view,
                )
                .await?
            }
            None => {
                sqlx_baseline(&db_url, baseline_clients, pgbench_secs, &envelope, &view).await?
            }
        };
        baselines.push(baseline);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    drop_database(&db_url).await;
    let best = baselines
        .iter()
        .max_by(|a, b| a.tps.total_cmp(&b.tps))
        .expect("at least one client count");

    // --- report -------------------------------------------------------------
    let ratio = intake_per_sec / best.tps;
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
        "intake, burst (202 Accepted)", intake_per_sec, p50, p99
    );
    println!(
        "{:<52} {:>12.0} {:>14.2} {:>14.2}",
        format!(
            "intake, paced at {:.0}/s ({:.0} % of peak)",
            paced_rate,
            PACED_SHARE * 100.0
        ),
        steady_per_sec,
        paced_p50,
        paced_p99
    );
    for baseline in &baselines {
        println!(
            "{:<52} {:>12.0} {:>29}",
            format!(
                "baseline: {}, {} clients{}",
                baseline.tool,
                baseline.clients,
                if std::ptr::eq(baseline, best) {
                    " (best)"
                } else {
                    ""
                }
            ),
            baseline.tps,
            format!("avg {} ms", baseline.latency_ms)
        );
    }
    println!("{}", "-".repeat(100));
    println!(
        "ratio intake / best baseline = {:.2}×   (goal ≥ {GOAL_RATIO:.1}×: {})",
        ratio,
        if ratio >= GOAL_RATIO { "MET" } else { "MISSED" }
    );
    println!(
        "paced p99 = {paced_p99:.2} ms            (goal ≤ {GOAL_PACED_P99_MS:.0} ms: {})",
        if paced_p99 <= GOAL_PACED_P99_MS {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!("burst: {}", peak.summary());
    println!("paced: {}", steady.summary());
    println!(
        "baseline failed transactions: {:?}",
        baselines
            .iter()
            .map(|b| (b.clients, b.failures))
            .collect::<Vec<_>>()
    );
    println!(
        "stored by intake (incl. warm-up): {stored_payments} payments, {stored_orders} payment_orders, \
         {stored_outbox} outbox rows"
    );
    if peak.latencies_ns.is_empty() {
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
        clients,
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
        clients,
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
