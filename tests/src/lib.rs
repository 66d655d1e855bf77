//! Shared helpers for paynode's integration tests: a fresh database, a
//! unique topic/group/Redis prefix and an in-process node per test, so tests
//! run in parallel against one Postgres, one Redis and one broker.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use paynode::config::Config;
use paynode::node::RunningNode;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The workspace root (components are built into `target/components` there).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn components_dir() -> PathBuf {
    std::env::var_os("PAYNODE_COMPONENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/components"))
}

pub fn component_path(name: &str) -> PathBuf {
    components_dir().join(format!("{name}.wasm"))
}

pub fn brokers() -> String {
    std::env::var("PAYNODE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

/// Whether the test broker hides records of aborted transactions from
/// `read_committed` readers, as Kafka does (`PAYNODE_TEST_BROKER_HIDES_ABORTED=1`;
/// noida-db does, nisshi 0.7 does not). Only then can a test assert that no
/// event id appears twice on a topic; otherwise it asserts the business
/// effect (one attempt, one journal) and says which check it skipped.
pub fn broker_hides_aborted() -> bool {
    std::env::var("PAYNODE_TEST_BROKER_HIDES_ABORTED").is_ok_and(|v| v == "1")
}

/// The broker with durable (Postgres) storage, for tests that kill nodes.
pub fn durable_brokers() -> String {
    std::env::var("PAYNODE_DURABLE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9095".into())
}

const ADMIN_DB_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database named after `id`.
pub async fn fresh_database(id: &str) -> String {
    let admin = PgPool::connect(ADMIN_DB_URL)
        .await
        .expect("Postgres on 127.0.0.1:5432");
    sqlx::query(&format!("CREATE DATABASE pn_{id}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    format!("postgres://postgres@127.0.0.1:5432/pn_{id}")
}

/// A config isolated for one test: own database, own prefix, port 0.
pub async fn test_config() -> Config {
    let id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut config = Config::default();
    // Dev mode: the dev HS256 secret, the local http JWKS servers and the
    // simulator PSP of the tests are all refused in production.
    config.auth.dev = true;
    config.database.url = fresh_database(&id).await;
    config.database.max_connections = 16;
    config.kafka.brokers = brokers();
    config.kafka.prefix = format!("t{id}.");
    config.kafka.partitions = 2;
    config.kafka.batch_max_wait_ms = 20;
    config.http.listen = "127.0.0.1:0".into();
    config.components.dir = components_dir();
    config.components.cache_dir = workspace_root().join("target/component-cache");
    config.components.poll_interval_ms = 500;
    config.outbox.poll_interval_ms = 10;
    config.retry.poll_interval_ms = 50;
    config.psp.status_check_delay_ms = 20;
    config.components.psp_adapter.config = [
        ("scenario".to_string(), "BEST_PSP_EVER".to_string()),
        ("latency".into(), "off".into()),
    ]
    .into_iter()
    .collect();
    config
}

pub struct TestNode {
    pub node: RunningNode,
    pub base: String,
    pub config: Config,
    pub pool: PgPool,
    pub http: reqwest::Client,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        paynode::telemetry::init(true);
        let node = paynode::node::start(config.clone())
            .await
            .expect("node starts");
        let base = format!("http://{}", node.addr.expect("http enabled"));
        let pool = node.pool.clone();
        TestNode {
            node,
            base,
            config,
            pool,
            http: reqwest::Client::new(),
        }
    }

    pub fn token(&self, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        paynode::api::auth::mint(&self.config.auth, "test-client", &roles, 600).expect("token")
    }

    /// POSTs a payment; returns (status, body).
    pub async fn post_payment(&self, key: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/payments", self.base))
            .bearer_auth(self.token(&["payment:write"]))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_payment(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/payments/{id}", self.base))
            .bearer_auth(self.token(&["payment:write"]))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// Polls until every order of the payment satisfies `done`, or panics.
    pub async fn wait_for(
        &self,
        payment_id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.get_payment(payment_id).await;
            let orders = view["paymentOrders"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !orders.is_empty() && orders.iter().all(&done) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for payment {payment_id}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_final(&self, payment_id: &str) -> Value {
        self.wait_for(payment_id, Duration::from_secs(60), |o| {
            matches!(
                o["status"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "REQUIRES_REVIEW")
            )
        })
        .await
    }

    /// The node's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.config.kafka.prefix)
    }

    pub async fn stop(self) {
        self.node.stop().await;
    }
}

/// A simple payment body; `sellers` = [(sellerId, amount minor)].
pub fn payment_body(order_id: &str, sellers: &[(&str, i64)]) -> Value {
    let total: i64 = sellers.iter().map(|(_, a)| a).sum();
    json!({
        "buyerId": "buyer-1",
        "orderId": order_id,
        "totalAmount": { "quantity": total, "currency": "EUR" },
        "paymentOrders": sellers.iter().map(|(s, a)| json!({ "sellerId": s, "amount": { "quantity": a, "currency": "EUR" } })).collect::<Vec<_>>(),
    })
}

/// A record read back from the broker.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Value,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` until `found` holds for the records read, or 15 s pass.
pub fn read_topic_until(
    brokers: &str,
    topic: &str,
    found: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records = read_topic(brokers, topic);
        if found(&records) || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads every record currently in `topic` (read_committed, no group commit).
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let mut list = TopicPartitionList::new();
    let mut total = 0;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .expect("watermarks");
            total += high - low;
            list.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .expect("partition");
        }
    }
    consumer.assign(&list).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Control records (transaction markers) use offsets too, so stop on a
    // quiet period rather than on a count.
    let mut quiet_since = Instant::now();
    while total > 0
        && Instant::now() < deadline
        && (records.is_empty() || quiet_since.elapsed() < Duration::from_millis(1500))
    {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(message) = message else { continue };
        quiet_since = Instant::now();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: serde_json::from_slice(message.payload().unwrap_or_default())
                .unwrap_or(Value::Null),
            headers,
        });
    }
    records
}

pub fn sha256_file(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("component built"),
    ))
}

/// A config whose simulator follows `script` / `status-script` (see the
/// simulator's docs) and whose retries back off from `base_ms`.
pub async fn scripted_config(script: &str, status_script: &str, base_ms: u64) -> Config {
    let mut config = test_config().await;
    config.components.psp_adapter.config = std::collections::BTreeMap::from([
        ("scenario".into(), "scripted".into()),
        ("script".into(), script.into()),
        ("status-script".into(), status_script.into()),
    ]);
    config.components.retry_policy.config = std::collections::BTreeMap::from([
        ("base-ms".into(), base_ms.to_string()),
        ("cap-ms".into(), base_ms.to_string()),
    ]);
    config
}

/// Polls `check` every 100 ms until it holds, or panics naming `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces one event envelope to `topic` (full name), keyed `key`, outside
/// any transaction: a redelivery as the broker would hand it over.
pub async fn produce_event(brokers: &str, topic: &str, key: &str, event: &Value) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let payload = serde_json::to_vec(event).expect("json");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}
pub mod faults;
pub mod hostile;

/// The fixture files of a folder of the workspace (e.g.
/// `psp-adapters/simulator/fixtures`), as `Registry::push` takes them.
pub fn fixtures_of(dir: &str) -> Vec<paynode::components::harness::FixtureFile> {
    paynode::cli::plugin::fixture_files(&workspace_root().join(dir))
        .expect("fixtures parse")
        .into_iter()
        .map(|(_, file)| file)
        .collect()
}
