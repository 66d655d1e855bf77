//! A `paynode serve` process: counters rise by exactly the payments that
//! flowed, the seed's gauges and histograms exist, and a log line written
//! inside the ledger stage carries the trace id given at intake.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paynode_tests::*;

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter(|l| l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_gauges_and_traced_logs() {
    let config = test_config().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path =
        std::env::temp_dir().join(format!("paynode-obs-{}.log", uuid::Uuid::new_v4().simple()));
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("paynode");
    assert!(bin.exists(), "run `cargo build -p paynode` first");
    let mut child = Command::new(bin)
        .args(["serve", "--dev"])
        .env("PAYNODE_LOG", "info")
        .env("PAYNODE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PAYNODE_DATABASE__URL", &config.database.url)
        .env("PAYNODE_KAFKA__BROKERS", &config.kafka.brokers)
        .env("PAYNODE_KAFKA__PREFIX", &config.kafka.prefix)
        .env("PAYNODE_KAFKA__PARTITIONS", "2")
        .env("PAYNODE_KAFKA__BATCH_MAX_WAIT_MS", "20")
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
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "node not ready: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scrape = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    let token =
        paynode::api::auth::mint(&config.auth, "obs", &["payment:write".into()], 600).unwrap();

    const N: usize = 5;
    let mut ids = Vec::new();
    for n in 0..N {
        let response = http
            .post(format!("{base}/api/v1/payments"))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("obs-{n}"))
            .header("X-Trace-Id", format!("trace-obs-{n}"))
            .json(&payment_body(&format!("obs-{n}"), &[("seller-o", 100)]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: serde_json::Value = response.json().await.unwrap();
        ids.push(body["paymentId"].as_str().unwrap().to_string());
    }
    // Wait for the ledger stage to log each recording (NORMAL scenario: 50–150 ms PSP latency).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = std::fs::read_to_string(&log_path).unwrap();
        let recorded: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("ledger entries recorded"))
            .collect();
        if recorded.len() >= N {
            for n in 0..N {
                let line = recorded
                    .iter()
                    .find(|l| l.contains(&format!("\"traceId\":\"trace-obs-{n}\"")));
                let line = line.unwrap_or_else(|| {
                    panic!("no ledger log line with trace-obs-{n}: {recorded:#?}")
                });
                let parsed: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
                assert_eq!(
                    parsed["span"]["stage"], "ledger_recording_consumer",
                    "{parsed}"
                );
                assert!(
                    parsed["span"]["eventId"].is_string()
                        && parsed["span"]["parentEventId"].is_string()
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger stage never logged {N} recordings"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // one gauge refresh
    let after = scrape().await;
    let rise =
        |name: &str, labels: &str| metric(&after, name, labels) - metric(&before, name, labels);
    assert_eq!(rise("payments_accepted_total", ""), N as f64);
    assert_eq!(rise("psp_calls_total", "result=\"succeeded\""), N as f64);
    assert_eq!(rise("psp_call_latency_seconds_count", ""), N as f64);
    assert_eq!(
        rise("component_calls_total", "slot=\"posting-rules\""),
        N as f64
    );
    for name in [
        "outbox_event_backlog",
        "redis_retry_zset_size",
        "kafka_consumergroup_lag",
        "psp_call_latency_seconds_bucket",
        "component_active_info",
        "http_requests_total",
    ] {
        assert!(
            after.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
