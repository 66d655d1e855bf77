//! The node talks to the broker over TLS + SASL/SCRAM-SHA-256.
//!
//! The test generates a throw-away CA and a server certificate for
//! 127.0.0.1/localhost with `openssl`, starts its own `nisshi` broker with a
//! TLS listener and `--authentication`, creates a SCRAM user, and runs a
//! payment end to end through a node configured for SASL_SSL. A client with
//! a wrong password (or without TLS) must not get anywhere.
//!
//! `nisshi user create` talks to a broker over plaintext only and the memory
//! storage engine lives inside one process, so the user is created through a
//! short-lived plaintext broker sharing a fresh Postgres storage database
//! with the TLS broker.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paynode_tests::{payment_body, TestNode};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sqlx::PgPool;
use uuid::Uuid;

const ADMIN_DB_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const USER: &str = "paynode-node";
const PASSWORD: &str = "scram-test-password-7f3a";

/// Kills the broker process when dropped (also on panic).
struct BrokerProcess {
    child: Child,
    name: &'static str,
}

impl BrokerProcess {
    fn spawn(name: &'static str, args: &[String], log: &Path) -> BrokerProcess {
        let log = std::fs::File::create(log).expect("broker log");
        let child = Command::new("nisshi")
            .arg("broker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("nisshi on PATH");
        BrokerProcess { child, name }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {} broker", self.name);
    }
}

/// Removes the temporary directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // PAYNODE_TEST_KEEP_TMP keeps certificates and broker logs for debugging.
        if std::env::var_os("PAYNODE_TEST_KEEP_TMP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_listening(port: u16, broker: &mut BrokerProcess, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!(
                "{} broker exited with {status}: {}",
                broker.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} broker not listening on {port}",
            broker.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(program: &str, args: &[&str], dir: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate for localhost/127.0.0.1 signed by it.
fn generate_certificates(dir: &Path) {
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=paynode kafka test CA",
        ],
        dir,
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        dir,
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        dir,
    );
}

/// A client config for the TLS broker with the given credentials.
fn client(brokers: &str, ca: &Path, password: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", USER)
        .set("sasl.password", password)
        .set("ssl.ca.location", ca.to_string_lossy().as_ref());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_runs_over_tls_with_scram() {
    let id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let dir = TempDir(std::env::temp_dir().join(format!("paynode-kafka-tls-{id}")));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    generate_certificates(&dir.0);
    let ca = dir.0.join("ca.pem");

    // Broker storage shared by the plaintext helper and the TLS broker.
    let admin = PgPool::connect(ADMIN_DB_URL).await.expect("Postgres");
    let database = format!("nisshi_tls_{id}");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .expect("create broker database");
    let storage = format!("postgres://postgres@localhost/{database}");

    // 1. A plaintext, unauthenticated helper broker, only to create the user.
    {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.0.join("helper.log");
        let mut helper = BrokerProcess::spawn(
            "helper",
            &[
                "--listener-url".into(),
                url.clone(),
                "--advertised-listener-url".into(),
                url.clone(),
                "--storage-engine".into(),
                storage.clone(),
            ],
            &log,
        );
        wait_listening(port, &mut helper, &log);
        run(
            "nisshi",
            &[
                "user",
                "create",
                "--broker",
                &url,
                "--mechanism",
                "scram256",
                USER,
                PASSWORD,
            ],
            &dir.0,
        );
    }

    // 2. The TLS listener with authentication required.
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = dir.0.join("broker.log");
    let mut broker = BrokerProcess::spawn(
        "tls",
        &[
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
            storage.clone(),
            "--cert".into(),
            dir.0.join("server.pem").to_string_lossy().into_owned(),
            "--key".into(),
            dir.0.join("server.key").to_string_lossy().into_owned(),
            "--authentication".into(),
            "--group-initial-rebalance-delay".into(),
            "0s".into(),
        ],
        &log,
    );
    wait_listening(port, &mut broker, &log);
    let brokers = format!("127.0.0.1:{port}");

    // Authentication is really on: right credentials work, wrong ones and
    // plaintext do not.
    let timeout = Duration::from_secs(10);
    {
        let good: BaseConsumer = client(&brokers, &ca, PASSWORD)
            .set("group.id", "tls-probe")
            .create()
            .expect("consumer");
        good.fetch_metadata(None, timeout)
            .expect("metadata with the right password");

        let bad: BaseConsumer = client(&brokers, &ca, "not-the-password")
            .set("group.id", "tls-probe")
            .create()
            .expect("consumer");
        let error = bad
            .fetch_metadata(None, timeout)
            .expect_err("a wrong password must not fetch metadata");
        eprintln!("wrong password, metadata: {error}");

        let bad_producer: FutureProducer = client(&brokers, &ca, "not-the-password")
            .set("message.timeout.ms", "5000")
            .create()
            .expect("producer");
        let delivery = bad_producer
            .send(
                FutureRecord::to("tls-probe").key("k").payload("v"),
                Duration::from_secs(5),
            )
            .await;
        let (error, _) = delivery.expect_err("a wrong password must not produce");
        eprintln!("wrong password, produce: {error}");

        let plaintext: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "tls-probe")
            .create()
            .expect("consumer");
        plaintext
            .fetch_metadata(None, Duration::from_secs(5))
            .expect_err("plaintext must not reach a TLS listener");
    }

    // 3. A node over SASL_SSL, end to end.
    let mut config = paynode_tests::test_config().await;
    config.kafka.brokers = brokers.clone();
    config.kafka.security_protocol = "SASL_SSL".into();
    config.kafka.sasl_mechanism = Some("SCRAM-SHA-256".into());
    config.kafka.sasl_username = Some(USER.into());
    config.kafka.sasl_password = Some(PASSWORD.into());
    config.kafka.ssl_ca_location = Some(ca.clone());
    let node = TestNode::start(config).await;
    let (status, body) = node
        .post_payment("tls-1", &payment_body("o-tls", &[("s-1", 1_000)]))
        .await;
    assert_eq!(status, 202, "{body}");
    let payment_id = body["paymentId"].as_str().expect("paymentId").to_string();
    let view = node.wait_final(&payment_id).await;
    for order in view["paymentOrders"].as_array().expect("orders") {
        assert_eq!(order["status"], "SUCCEEDED", "{view:#}");
    }
    node.stop().await;
    drop(broker);

    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
}
