//! Helpers of the fault suite (`tests/tests/faults.rs`): dependencies a test
//! owns (a noida-db broker, a PostgreSQL cluster, a Redis server, each on a
//! free port and a temp dir, so killing them disturbs no other test), a
//! Stripe-shaped fake PSP that can stop answering, a `paynode serve`
//! process, a paced load generator and the end-of-case checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{json, Value};

use crate::{components_dir, payment_body, workspace_root};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A fresh directory under the system temp dir, removed by the owner's Drop.
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "paynode-fault-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn wait_port(port: u16, up: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "{what} on :{port} never came {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file"),
    )
}

/// A noida-db broker of the test's own (Kafka protocol only), kept across
/// restarts by its data dir.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        let mut broker = Broker {
            port: free_port(),
            dir: temp_dir("noida"),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os("PAYNODE_NOIDA_BIN") {
            return path.into();
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let installed = home.join(".cargo/bin/noida-db");
        if installed.exists() {
            installed
        } else {
            "noida-db".into()
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(Self::binary())
            .args(["start", "--only", "kafka", "--kafka-port"])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.join("broker.log")))
            .stderr(log_file(&self.dir.join("broker.log")))
            .spawn()
            .expect("noida-db runs (cargo install noida-db@0.2.3 --locked --no-default-features --features kafka)");
        self.child = Some(child);
        wait_port(self.port, true, "noida-db");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_port(self.port, false, "noida-db");
    }

    /// Starts again on the same port and data dir.
    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL 15 cluster of the test's own (trust auth, fsync off), in a
/// temp dir, on a free port. Run as user `postgres` when the test is root
/// (PostgreSQL refuses to run as root).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    running: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn pg_command(tool: &str) -> Command {
    let tool = std::env::var("PAYNODE_PG_BIN").unwrap_or_else(|_| PG_BIN.into()) + "/" + tool;
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &tool]);
        command
    } else {
        Command::new(tool)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = temp_dir("pg");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres").arg(&dir);
                    c
                },
                "chown the cluster dir",
            );
        }
        let mut initdb = pg_command("initdb");
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run(initdb, "initdb");
        let mut pg = Postgres {
            port: free_port(),
            dir,
            running: false,
        };
        pg.start_again();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&mut self) {
        let mut start = pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                self.port,
                self.dir.display()
            ))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "start"]);
        run(start, "pg_ctl start");
        self.running = true;
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, as in a restart.
    pub fn stop(&mut self) {
        let mut stop = pg_command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(stop, "pg_ctl stop");
        self.running = false;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut stop = pg_command("pg_ctl");
            stop.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis of the test's own that keeps nothing on disk: a restart is empty.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.join("redis.log")))
            .stderr(log_file(&self.dir.join("redis.log")))
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        wait_port(self.port, true, "redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_port(self.port, false, "redis-server");
    }

    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the fake PSP saw for one idempotency key.
#[derive(Default, Debug, Clone)]
pub struct KeyRecord {
    /// The answer a later request with this key replays (Stripe's rule).
    pub charged: Option<Value>,
    /// Charge requests that found the key already charged: a second charge.
    pub second_charges: u32,
    /// Charge requests received (any answer).
    pub charge_requests: u32,
}

#[derive(Default)]
pub struct PspState {
    pub by_key: HashMap<String, KeyRecord>,
    pub requests: u64,
    /// Requests that got no answer because the PSP was hanging.
    pub hung: u64,
}

/// A Stripe-shaped fake PSP (`POST /v1/payment_intents`,
/// `GET /v1/payment_intents/search`): ~25 % of first charges fail with a
/// 500 (retryable, nothing charged), the rest succeed. While `hang` is set
/// it accepts every connection and never replies; a charge it receives
/// then is carried out (the answer is what gets lost), so only `status`
/// can tell the node what happened.
#[derive(Clone)]
pub struct FakePsp {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<PspState>>,
    hang: Arc<AtomicBool>,
}

#[derive(Clone)]
struct PspShared {
    state: Arc<Mutex<PspState>>,
    hang: Arc<AtomicBool>,
}

impl FakePsp {
    pub async fn start() -> FakePsp {
        let shared = PspShared {
            state: Arc::default(),
            hang: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/payment_intents", post(psp_create))
            .route("/v1/payment_intents/search", get(psp_search))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake PSP");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakePsp {
            addr,
            state: shared.state,
            hang: shared.hang,
        }
    }

    pub fn set_hanging(&self, hanging: bool) {
        self.hang.store(hanging, Ordering::SeqCst);
    }

    pub fn hung(&self) -> u64 {
        self.state.lock().unwrap().hung
    }
}

fn first_answer(key: &str, requests: u64) -> (StatusCode, Value) {
    let h = key
        .bytes()
        .fold(requests, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    if h % 4 == 0 {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": { "type": "api_error", "message": "try later" } }),
        )
    } else {
        (StatusCode::OK, intent(key))
    }
}

fn intent(key: &str) -> Value {
    json!({ "id": format!("pi_{}", &key[..key.len().min(24)]), "object": "payment_intent", "status": "succeeded" })
}

async fn psp_create(
    State(psp): State<PspShared>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let hanging = psp.hang.load(Ordering::SeqCst);
    let answer = {
        let mut state = psp.state.lock().unwrap();
        state.requests += 1;
        let requests = state.requests;
        let record = state.by_key.entry(key.clone()).or_default();
        record.charge_requests += 1;
        if let Some(answer) = &record.charged {
            record.second_charges += 1;
            (StatusCode::OK, answer.clone())
        } else if hanging {
            // Carried out; the answer is what gets lost.
            record.charged = Some(intent(&key));
            (StatusCode::OK, intent(&key))
        } else {
            let (status, answer) = first_answer(&key, requests);
            if status == StatusCode::OK {
                record.charged = Some(answer.clone());
            }
            (status, answer)
        }
    };
    if hanging {
        psp.state.lock().unwrap().hung += 1;
        std::future::pending::<()>().await;
    }
    (answer.0, axum::Json(answer.1))
}

async fn psp_search(
    State(psp): State<PspShared>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    if psp.hang.load(Ordering::SeqCst) {
        psp.state.lock().unwrap().hung += 1;
        std::future::pending::<()>().await;
    }
    let wanted = query.get("query").cloned().unwrap_or_default();
    let state = psp.state.lock().unwrap();
    let found: Vec<Value> = state
        .by_key
        .iter()
        .filter(|(k, r)| r.charged.is_some() && wanted.contains(&format!("'{k}'")))
        .filter_map(|(_, r)| r.charged.clone())
        .collect();
    axum::Json(json!({ "object": "search_result", "data": found }))
}

/// What a node process is wired to.
pub struct NodeSetup {
    pub database_url: String,
    pub brokers: String,
    pub redis_url: String,
    pub psp: SocketAddr,
    /// Extra TOML appended to the config (e.g. `[psp]` settings).
    pub extra: String,
}

/// A `paynode serve --dev` process; killed when dropped.
pub struct NodeProcess {
    child: Child,
    pub base: String,
    pub dir: PathBuf,
    pub prefix: String,
}

fn paynode_binary() -> PathBuf {
    // target/debug/deps/faults-* → target/debug/paynode
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("paynode");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p paynode` first",
        bin.display()
    );
    bin
}

impl NodeProcess {
    /// Writes the config and starts the node; returns once it is ready.
    pub async fn start(setup: &NodeSetup) -> NodeProcess {
        let port = free_port();
        let dir = temp_dir("node");
        let prefix = format!("f{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let config = format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
[database]
url = "{db}"
max_connections = 32
[redis]
url = "{redis}"
[kafka]
brokers = "{brokers}"
prefix = "{prefix}"
partitions = 2
batch_max_wait_ms = 20
[outbox]
poll_interval_ms = 10
[components]
dir = "{components}"
cache_dir = "{cache}"
[components.psp_adapter]
default_component = "psp-stripe"
allow_hosts = ["http://{psp}"]
http_timeout_ms = 2000
[components.psp_adapter.config]
base-url = "http://{psp}"
[secrets]
psp_api_key = "sk_test_fake"
{extra}
"#,
            db = setup.database_url,
            redis = setup.redis_url,
            brokers = setup.brokers,
            psp = setup.psp,
            components = components_dir().display(),
            cache = workspace_root().join("target/component-cache").display(),
            extra = setup.extra,
        );
        let config_file = dir.join("paynode.toml");
        std::fs::write(&config_file, config).expect("write config");
        let child = Command::new(paynode_binary())
            .arg("--config")
            .arg(&config_file)
            .args(["serve", "--dev"])
            .env("PAYNODE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("node.log")))
            .spawn()
            .expect("spawn paynode");
        let node = NodeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            prefix,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node.ready().await {
            node.assert_running();
            assert!(
                Instant::now() < deadline,
                "node not ready; see {}",
                node.log().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Panics (showing the log's tail) if the process has exited.
    pub fn assert_running(&self) {
        // try_wait needs &mut; a zero-signal kill tells without reaping.
        let alive = Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"));
        if !alive || zombie {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "the node exited during the fault; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// `/health/ready` answered 200 within 3 s.
    pub async fn ready(&self) -> bool {
        self.readiness().await.0
    }

    /// Whether `/health/ready` answered 200 within 3 s, and what it said.
    pub async fn readiness(&self) -> (bool, String) {
        let http = reqwest::Client::new();
        let answer = http
            .get(format!("{}/health/ready", self.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        match answer {
            Ok(response) => (
                response.status().is_success(),
                response.text().await.unwrap_or_default(),
            ),
            Err(error) => (false, error.to_string()),
        }
    }

    /// Waits until readiness is `want`, checking the process stays up.
    pub async fn wait_ready_is(&self, want: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ready, said) = self.readiness().await;
            if ready == want {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "/health/ready never became {want} (last answer: {said}); see {}",
                self.log().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn token(&self) -> String {
        let mut auth = paynode::config::Config::default().auth;
        auth.dev = true;
        paynode::api::auth::mint(&auth, "fault-client", &["payment:write".into()], 3600)
            .expect("token")
    }

    /// The node's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A paced stream of payments (one every `every`), each with its own
/// Idempotency-Key; remembers the ids of the accepted (202) ones.
pub struct Load {
    running: Arc<AtomicBool>,
    offered: Arc<AtomicU64>,
    accepted: Arc<Mutex<Vec<String>>>,
    /// Answers other than 202, by status (a 0 for no answer at all).
    refused: Arc<Mutex<HashMap<u16, u64>>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

/// ~125 payments/s: the suite's floor is 100/s while a fault happens.
pub const LOAD_EVERY: Duration = Duration::from_millis(8);

impl Load {
    pub fn start(node: &NodeProcess) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let offered = Arc::new(AtomicU64::new(0));
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        // Ids may not hold '.': the tag is the prefix without it.
        let tag = node.prefix.trim_end_matches('.').to_string() + "-";
        let (base, token) = (node.base.clone(), node.token());
        let refused = Arc::new(Mutex::new(HashMap::<u16, u64>::new()));
        let task = {
            let (running, offered, accepted) = (running.clone(), offered.clone(), accepted.clone());
            let refused = refused.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    // The node's own request deadline (http.request_timeout_ms).
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut tick = tokio::time::interval(LOAD_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut inflight = tokio::task::JoinSet::new();
                while running.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let n = offered.fetch_add(1, Ordering::SeqCst);
                    let order = format!("{tag}{n}");
                    let request = http
                        .post(format!("{base}/api/v1/payments"))
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &order)
                        .json(&payment_body(
                            &order,
                            &[(&format!("seller-{}", n % 5), 100 + (n % 7) as i64)],
                        ));
                    let (accepted, refused) = (accepted.clone(), refused.clone());
                    inflight.spawn(async move {
                        let Ok(response) = request.send().await else {
                            *refused.lock().unwrap().entry(0).or_default() += 1;
                            return;
                        };
                        let status = response.status().as_u16();
                        if status != 202 {
                            *refused.lock().unwrap().entry(status).or_default() += 1;
                            return;
                        }
                        if let Ok(body) = response.json::<Value>().await {
                            if let Some(id) = body["paymentId"].as_str() {
                                accepted.lock().unwrap().push(id.to_string());
                            }
                        }
                    });
                    while inflight.try_join_next().is_some() {}
                }
                while inflight.join_next().await.is_some() {}
            })
        };
        Load {
            running,
            offered,
            accepted,
            refused,
            task,
            started: Instant::now(),
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Stops, waits for the requests in flight; returns the accepted ids.
    pub async fn stop(self) -> Vec<uuid::Uuid> {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.expect("load task");
        let offered = self.offered.load(Ordering::SeqCst);
        let rate = offered as f64 / self.started.elapsed().as_secs_f64();
        let accepted = self.accepted.lock().unwrap().clone();
        println!(
            "load: {offered} offered ({rate:.0}/s), {} accepted, refused by status: {:?}",
            accepted.len(),
            self.refused.lock().unwrap()
        );
        assert!(rate >= 100.0, "offered load {rate:.0}/s is below 100/s");
        accepted
            .iter()
            .map(|id| id.parse().expect("uuid"))
            .collect()
    }
}

/// Waits until `accepted` grew by `more` payments (intake works).
pub async fn wait_accepting(load: &Load, node: &NodeProcess, more: usize, timeout: Duration) {
    let target = load.accepted() + more;
    let deadline = Instant::now() + timeout;
    while load.accepted() < target {
        node.assert_running();
        if Instant::now() > deadline {
            let refused = load.refused.lock().unwrap().clone();
            panic!(
                "intake did not accept {more} more payments (refused by status: {refused:?}); see {}",
                node.log().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts orders in `statuses` (a SQL list, e.g. `'SUCCEEDED'`).
pub async fn count_orders(pool: &sqlx::PgPool, statuses: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM payment_orders WHERE status IN ({statuses})"
    ))
    .fetch_one(pool)
    .await
    .expect("count orders")
}

/// The checks every fault case ends with: every accepted payment exists and
/// each of its orders is final or REQUIRES_REVIEW; the PSP saw at most one
/// successful charge per idempotency key and never a charge of a key it
/// had charged; every SUCCEEDED order was charged; every finalized order
/// has exactly one ledger recording; balances equal the postings and
/// `reconcile` finds nothing. Returns the pool for case-specific checks.
pub async fn assert_consistent(
    node: &NodeProcess,
    database_url: &str,
    psp: &FakePsp,
    accepted: &[uuid::Uuid],
    settle_within: Duration,
) -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
    let deadline = Instant::now() + settle_within;
    loop {
        node.assert_running();
        let open = count_orders(&pool, "'INITIATED', 'PENDING', 'PARKED'").await;
        let unsettled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payment_orders WHERE status NOT IN ('SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW')",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        if unsettled == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unsettled} orders never settled ({open} initiated/pending/parked); see {}",
            node.log().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE payment_id = ANY($1)")
        .bind(accepted)
        .fetch_one(&pool)
        .await
        .expect("count payments");
    assert_eq!(found, accepted.len() as i64, "accepted payments missing");
    assert_psp_charged_once(&pool, psp).await;
    assert_ledger_reconciled(node, &pool).await;
    pool
}

async fn assert_psp_charged_once(pool: &sqlx::PgPool, psp: &FakePsp) {
    let orders: Vec<(String, String)> =
        sqlx::query_as("SELECT psp_idempotency_key, status FROM payment_orders")
            .fetch_all(pool)
            .await
            .expect("orders");
    let state = psp.state.lock().unwrap();
    let doubles: Vec<_> = state
        .by_key
        .iter()
        .filter(|(_, r)| r.second_charges > 0)
        .map(|(k, r)| (k.clone(), r.second_charges))
        .collect();
    assert!(
        doubles.is_empty(),
        "keys charged again after a success: {doubles:?}"
    );
    for (key, status) in &orders {
        let charged = state.by_key.get(key).is_some_and(|r| r.charged.is_some());
        match status.as_str() {
            "SUCCEEDED" => assert!(
                charged,
                "order {key} SUCCEEDED but the PSP never charged it"
            ),
            "FAILED" => assert!(!charged, "order {key} FAILED but the PSP charged it"),
            _ => {}
        }
    }
    let charged = state
        .by_key
        .values()
        .filter(|r| r.charged.is_some())
        .count();
    println!(
        "PSP: {} requests, {charged} keys charged, {} requests left hanging",
        state.requests, state.hung
    );
}

async fn assert_ledger_reconciled(node: &NodeProcess, pool: &sqlx::PgPool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let checks = paynode::cli::reconcile::checks(pool, 300)
            .await
            .expect("reconcile");
        let not_one: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payment_orders o WHERE o.status IN ('SUCCEEDED', 'FAILED')
               AND (SELECT count(*) FROM ledger_recordings r WHERE r.payment_order_id = o.payment_order_id) <> 1",
        )
        .fetch_one(pool)
        .await
        .expect("recordings");
        let breaches: Vec<_> = checks.iter().filter(|c| c.breaches > 0).collect();
        if breaches.is_empty() && not_one == 0 {
            return;
        }
        node.assert_running();
        assert!(
            Instant::now() < deadline,
            "reconcile: {breaches:?}; {not_one} finalized orders without exactly one ledger recording; see {}",
            node.log().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
