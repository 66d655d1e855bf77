//! Transport security of the node's own connections. The test services
//! (Postgres, Redis, the broker) are plaintext: outside dev mode each such
//! connection is a warning at start, and `security.require_tls` refuses to
//! start, naming every plaintext connection.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paynode_tests::*;

const OWN_SECRET: &str = "a-secret-of-this-deployment-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn require_tls_refuses_plaintext_connections() {
    let mut config = test_config().await;
    config.auth.dev = false;
    config.auth.hs256_secret = Some(OWN_SECRET.into());
    config.psp.allow_simulator = true;
    config.security.require_tls = true;
    let refused = paynode::node::start(config)
        .await
        .err()
        .expect("a node with security.require_tls started on plaintext services");
    let message = format!("{refused:#}");
    for named in ["security.require_tls", "kafka", "postgres", "redis"] {
        assert!(message.contains(named), "{named} not named: {message}");
    }
}

/// `paynode serve` outside dev mode on the plaintext test services: it
/// starts, and its JSON log carries one warning per plaintext connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_connections_are_warned_about_outside_dev_mode() {
    let config = test_config().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path =
        std::env::temp_dir().join(format!("paynode-tls-{}.log", uuid::Uuid::new_v4().simple()));
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("paynode");
    assert!(bin.exists(), "run `cargo build -p paynode` first");
    let mut child = Command::new(bin)
        .args(["serve"])
        .env("PAYNODE_LOG", "info")
        .env("PAYNODE_AUTH__HS256_SECRET", OWN_SECRET)
        .env("PAYNODE_PSP__ALLOW_SIMULATOR", "true")
        .env("PAYNODE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYNODE_DATABASE__URL", &config.database.url)
        .env("PAYNODE_KAFKA__BROKERS", &config.kafka.brokers)
        .env("PAYNODE_KAFKA__PREFIX", &config.kafka.prefix)
        .env("PAYNODE_KAFKA__PARTITIONS", "2")
        .env("PAYNODE_COMPONENTS__DIR", &config.components.dir)
        .env(
            "PAYNODE_COMPONENTS__CACHE_DIR",
            &config.components.cache_dir,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("http://127.0.0.1:{port}/health/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "node not ready: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let warnings: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("plaintext"))
        })
        .collect();
    for connection in ["kafka", "postgres", "redis"] {
        assert!(
            warnings.iter().any(|w| w["connection"] == connection),
            "no plaintext warning for {connection}: {warnings:#?}\n{logs}"
        );
    }
}
