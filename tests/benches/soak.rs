//! Soak: a `paynode serve` process (the run command's debug build) under a
//! steady load of half its measured pipeline rate for N minutes, on the run
//! command's durable broker. Every minute it prints the node's resident
//! memory (VmRSS), the summed `kafka_consumergroup_lag` the node reports and
//! how many orders reached the ledger; at the end, the p99 intake → ledger
//! of each minute's payments and a reconciliation.
//!
//! Baseline, same run: the pipeline rate is measured first (a burst of
//! payments, intake → ledger), and the soak's last minute is compared with
//! its first (RSS growth ratio, p99 ratio, RSS slope per minute).
//!
//! Run: `cargo build -p paynode && cargo bench -p paynode-tests --bench soak`
//! Env: `PAYNODE_SOAK_MINUTES` (10), `PAYNODE_SOAK_BROKERS` (127.0.0.1:9092,
//! the run command's noida-db), `PAYNODE_SOAK_BURST` (1000 payments for the
//! rate), `PAYNODE_SOAK_BIN` (default `<target>/debug/paynode`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paynode_tests::{payment_body, test_config};

/// Issue 10's goal for the node's memory under the soak.
const GOAL_RSS_MB: f64 = 150.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn p99(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * 0.99) as usize).min(values.len() - 1)]
}

fn node_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PAYNODE_SOAK_BIN") {
        return Ok(bin.into());
    }
    // target/release/deps/soak-* → target/debug/paynode
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("bench executable outside a target dir")?;
    let bin = target.join("debug/paynode");
    if !bin.exists() {
        bail!(
            "{} missing: run `cargo build -p paynode` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// The node's resident set in MB, from /proc.
fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS missing")?;
    Ok(kb / 1024.0)
}

struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_node(config: &paynode::config::Config, dir: &Path) -> Result<Node> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let file = dir.join("paynode.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
[database]
url = "{db}"
max_connections = 16
[kafka]
brokers = "{brokers}"
prefix = "{prefix}"
partitions = 2
[components]
dir = "{components}"
cache_dir = "{cache}"
[components.psp_adapter.config]
scenario = "BEST_PSP_EVER"
latency = "off"
"#,
            db = config.database.url,
            brokers = config.kafka.brokers,
            prefix = config.kafka.prefix,
            components = config.components.dir.display(),
            cache = config.components.cache_dir.display(),
        ),
    )?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let child = Command::new(node_binary()?)
        .args(["--config", file.to_str().unwrap(), "serve", "--dev"])
        .env("PAYNODE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?;
    let node = Node {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http.get(format!("{}/health/ready", node.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(node);
        }
        if Instant::now() > deadline {
            bail!("node not ready; see {}", dir.join("node.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts payment `{buyer}-{i}`; an error unless answered 202.
async fn post_one(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    buyer: &str,
    i: u64,
) -> Result<()> {
    let key = format!("{buyer}-{i}");
    let mut body = payment_body(&key, &[(&format!("seller-{}", i % 64), 1000)]);
    body["buyerId"] = buyer.into();
    let response = http
        .post(format!("{base}/api/v1/payments"))
        .bearer_auth(token)
        .header("Idempotency-Key", &key)
        .json(&body)
        .send()
        .await?;
    if response.status().as_u16() != 202 {
        bail!("payment {key}: {}", response.status());
    }
    Ok(())
}

async fn recorded(pool: &sqlx::PgPool, buyer: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM ledger_recordings lr
         JOIN payment_orders po ON po.payment_order_id = lr.payment_order_id
         JOIN payments p ON p.payment_id = po.payment_id WHERE p.buyer_id = $1",
    )
    .bind(buyer)
    .fetch_one(pool)
    .await?)
}

async fn wait_recorded(
    pool: &sqlx::PgPool,
    buyer: &str,
    want: i64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while recorded(pool, buyer).await? < want {
        if Instant::now() > deadline {
            bail!("{buyer}: fewer than {want} orders recorded after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The pipeline's rate: `count` payments posted by 32 clients, until every
/// order is recorded in the ledger.
async fn measure_rate(node: &Node, pool: &sqlx::PgPool, token: &str, count: u64) -> Result<f64> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (http, base, token, next) = (
            http.clone(),
            node.base.clone(),
            token.to_string(),
            next.clone(),
        );
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                post_one(&http, &base, &token, "soak-burst", i).await?;
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done??;
    }
    wait_recorded(pool, "soak-burst", count as i64, Duration::from_secs(300)).await?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn summed_lag(http: &reqwest::Client, base: &str) -> Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("kafka_consumergroup_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// p99 intake → ledger recorded (ms) of the soak's payments, per minute of
/// their intake.
async fn p99_per_minute(
    pool: &sqlx::PgPool,
    start: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(i64, usize, f64)>> {
    let rows: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT floor(extract(epoch FROM p.created_at - $1) / 60)::int8,
                extract(epoch FROM lr.created_at - p.created_at)::float8 * 1000
         FROM payments p
         JOIN payment_orders po ON po.payment_id = p.payment_id
         JOIN ledger_recordings lr ON lr.payment_order_id = po.payment_order_id
         WHERE p.buyer_id = 'soak'",
    )
    .bind(start)
    .fetch_all(pool)
    .await?;
    let minutes = rows.iter().map(|(m, _)| *m).max().unwrap_or(-1) + 1;
    let mut out = Vec::new();
    for minute in 0..minutes {
        let mut values: Vec<f64> = rows
            .iter()
            .filter(|(m, _)| *m == minute)
            .map(|(_, v)| *v)
            .collect();
        let n = values.len();
        out.push((minute, n, p99(&mut values)));
    }
    Ok(out)
}

/// Least-squares slope of `values` per step.
fn slope(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in values.iter().enumerate() {
        num += (x as f64 - mean_x) * (y - mean_y);
        den += (x as f64 - mean_x).powi(2);
    }
    num / den
}

async fn run() -> Result<()> {
    let minutes = env_u64("PAYNODE_SOAK_MINUTES", 10).max(1);
    let burst = env_u64("PAYNODE_SOAK_BURST", 1000).max(1);
    let mut config = test_config().await;
    config.kafka.brokers =
        std::env::var("PAYNODE_SOAK_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let dir = std::env::temp_dir().join(format!("paynode-soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let node = start_node(&config, &dir).await?;
    let pid = node.child.id();
    let pool = sqlx::PgPool::connect(&config.database.url).await?;
    let token =
        paynode::api::auth::mint(&config.auth, "soak", &["payment:write".into()], 24 * 3600)?;
    println!(
        "soak: broker {}, node pid {pid}, logs {}",
        config.kafka.brokers,
        dir.display()
    );
    println!("RSS after start: {:.1} MB", rss_mb(pid)?);

    let rate = measure_rate(&node, &pool, &token, burst).await?;
    let paced = (rate / 2.0).max(1.0);
    println!("baseline: pipeline rate {rate:.0} orders/s ({burst} payments, intake → ledger); soak at {paced:.0}/s for {minutes} min");

    let running = Arc::new(AtomicBool::new(true));
    let posted = Arc::new(AtomicU64::new(0));
    let load = {
        let (running, posted, base, token) = (
            running.clone(),
            posted.clone(),
            node.base.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / paced));
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                tick.tick().await;
                let (http, base, token, posted) =
                    (http.clone(), base.clone(), token.clone(), posted.clone());
                tasks.spawn(async move {
                    let sent = post_one(&http, &base, &token, "soak", i).await;
                    if sent.is_ok() {
                        posted.fetch_add(1, Ordering::Relaxed);
                    }
                    sent
                });
                i += 1;
                while let Some(done) = tasks.try_join_next() {
                    if let Ok(Err(error)) = done {
                        eprintln!("post failed: {error:#}");
                    }
                }
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    let http = reqwest::Client::new();
    let mut rss = Vec::new();
    println!("minute | RSS MB | lag (summed) | posted | recorded");
    for minute in 1..=minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mb = rss_mb(pid)?;
        rss.push(mb);
        let lag = summed_lag(&http, &node.base).await.unwrap_or(f64::NAN);
        let done = recorded(&pool, "soak").await?;
        println!(
            "{minute:>6} | {mb:>6.1} | {lag:>12.0} | {:>6} | {done:>8}",
            posted.load(Ordering::Relaxed)
        );
    }
    running.store(false, Ordering::SeqCst);
    load.await?;
    let total = posted.load(Ordering::Relaxed) as i64;
    wait_recorded(&pool, "soak", total, Duration::from_secs(300)).await?;

    println!("minute | payments | p99 intake → ledger ms");
    let per_minute = p99_per_minute(&pool, start).await?;
    for (minute, n, p) in &per_minute {
        println!("{:>6} | {n:>8} | {p:>8.0}", minute + 1);
    }
    let checks = paynode::cli::reconcile::checks(&pool, 300).await?;
    let breaches: Vec<_> = checks.iter().filter(|c| c.breaches > 0).collect();
    println!(
        "reconcile: {} checks, {} with breaches {breaches:?}",
        checks.len(),
        breaches.len()
    );

    let (first, last) = (rss[0], *rss.last().unwrap());
    let max = rss.iter().cloned().fold(0.0, f64::max);
    println!(
        "RSS: first minute {first:.1} MB, last {last:.1} MB, max {max:.1} MB (goal ≤ {GOAL_RSS_MB} MB: {}); growth ratio last/first {:.2}, slope {:+.2} MB/min",
        if max <= GOAL_RSS_MB { "met" } else { "MISSED" },
        last / first,
        slope(&rss),
    );
    let full: Vec<_> = per_minute
        .iter()
        .filter(|(m, _, _)| (*m as u64) < minutes)
        .collect();
    if let (Some(a), Some(b)) = (full.first(), full.last()) {
        println!(
            "p99 intake → ledger: first minute {:.0} ms, last {:.0} ms, ratio {:.2}",
            a.2,
            b.2,
            b.2 / a.2
        );
    }
    drop(node);
    if !breaches.is_empty() {
        bail!("reconciliation found breaches");
    }
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
