//! Hot swap across two nodes under a steady stream of payments: after
//! `activate` both nodes make PSP calls with the new version, with zero lost
//! and zero duplicated attempts; the same for `rollback`; and again with the
//! LISTEN connections killed and no NOTIFY sent, so polling does the work.
//! A batch that started before a switch finishes on the version it started
//! with, so attempts are checked from one second after every node switched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynode::components::Slot;
use paynode::store::plugins;
use paynode_tests::*;

/// The simulator with an extra custom section: same behaviour, new sha.
fn simulator_v2() -> Vec<u8> {
    let mut bytes = std::fs::read(component_path("psp-simulator")).unwrap();
    let name = b"paynode-test-version";
    let payload = b"v2";
    let body_len = 1 + name.len() + payload.len();
    bytes.push(0); // custom section id
    bytes.push(body_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

async fn wait_switched(nodes: &[&TestNode], sha: &str) -> Duration {
    let started = Instant::now();
    while !nodes
        .iter()
        .all(|n| n.node.registry.snapshot()["psp-adapter"].0 == sha)
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nodes did not switch to {sha}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Holds a phase open for at least 3 s and until `sha` has made calls since
/// `since`: a consumer-group rebalance can pause the PSP stage for seconds,
/// and a phase must not end before the new version had its chance to serve.
async fn hold_phase(node: &TestNode, sha: &str, since: chrono::DateTime<chrono::Utc>) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let calls: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM psp_attempts WHERE component_sha256 = $1 AND claimed_at > $2",
        )
        .bind(sha)
        .bind(since)
        .fetch_one(&node.pool)
        .await
        .unwrap();
        if calls >= 20 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {calls} calls with {sha} in the 30 s after it was activated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activation_and_rollback_reach_every_node_under_load() {
    let mut config_a = test_config().await;
    config_a.stages.instance_id = "node-a".into();
    config_a.components.poll_interval_ms = 300;
    let mut config_b = config_a.clone();
    config_b.stages.instance_id = "node-b".into();
    let a = TestNode::start(config_a).await;
    let b = TestNode::start(config_b).await;

    let v1 = a.node.registry.snapshot()["psp-adapter"].0.clone();
    let v2 = a
        .node
        .registry
        .push(
            Slot::PspAdapter,
            &simulator_v2(),
            &fixtures_of("psp-adapters/simulator/fixtures"),
            "test",
        )
        .await
        .unwrap()
        .sha256;
    assert_ne!(v1, v2);
    let config = serde_json::to_value(BTreeMap::from([
        ("scenario", "BEST_PSP_EVER"),
        ("latency", "off"),
    ]))
    .unwrap();

    // A steady stream of ~200 payments/s until told to stop.
    let running = Arc::new(AtomicBool::new(true));
    let sender = {
        let running = running.clone();
        let base = a.base.clone();
        let token = a.token(&["payment:write"]);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut pending = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut n = 0;
            while running.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                pending.push(tokio::spawn(async move {
                    let order = format!("swap-{n}");
                    let response = http
                        .post(format!("{base}/api/v1/payments"))
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &order)
                        .json(&payment_body(&order, &[("seller-s", 100)]))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 202);
                    let body: serde_json::Value = response.json().await.unwrap();
                    body["paymentId"].as_str().unwrap().to_string()
                }));
            }
            let mut ids = Vec::new();
            for task in pending {
                ids.push(task.await.unwrap());
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. activate v2 (NOTIFY path)
    let t = Instant::now();
    plugins::activate(
        &a.pool,
        "psp-adapter",
        &v2,
        &config,
        None,
        "activate",
        "test",
    )
    .await
    .unwrap();
    let switch = wait_switched(&[&a, &b], &v2).await;
    println!("activate: all nodes on v2 after {:?} (notify)", switch);
    let after_activate = chrono::Utc::now();
    hold_phase(&a, &v2, after_activate).await;

    // 2. rollback to v1
    let previous = plugins::previous(&a.pool, "psp-adapter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(previous.sha256, v1);
    plugins::activate(
        &a.pool,
        "psp-adapter",
        &v1,
        &previous.config,
        None,
        "rollback",
        "test",
    )
    .await
    .unwrap();
    let switch = wait_switched(&[&a, &b], &v1).await;
    println!("rollback: all nodes on v1 after {:?} (notify)", switch);
    let after_rollback = chrono::Utc::now();
    hold_phase(&a, &v1, after_rollback).await;

    // 3. kill the LISTEN connections and activate without NOTIFY: polling only.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'")
        .execute(&a.pool)
        .await
        .unwrap();
    // Let the nodes notice the loss (they refresh once then) before the
    // NOTIFY-less activation, so only the poll timer can pick it up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("INSERT INTO plugin_activations (slot, sha256, config, action, activated_by) VALUES ('psp-adapter', $1, $2, 'activate', 'test')")
        .bind(&v2)
        .bind(&config)
        .execute(&a.pool)
        .await
        .unwrap();
    let switch = wait_switched(&[&a, &b], &v2).await;
    println!(
        "activate: all nodes on v2 after {:?} (polling fallback)",
        switch
    );
    let after_poll = chrono::Utc::now();
    hold_phase(&a, &v2, after_poll).await;
    running.store(false, Ordering::SeqCst);
    let ids = sender.await.unwrap();
    println!(
        "{} payments in {:?} ({:.0}/s)",
        ids.len(),
        t.elapsed(),
        ids.len() as f64 / t.elapsed().as_secs_f64()
    );
    assert!(
        ids.len() >= 1_000,
        "stream too slow: {} payments",
        ids.len()
    );

    // Zero lost: every payment final and succeeded.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = a
            .scalar("SELECT count(*) FROM payment_orders WHERE status <> 'SUCCEEDED'")
            .await;
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} orders never succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        a.scalar("SELECT count(*) FROM payment_orders").await,
        ids.len() as i64
    );
    // Zero duplicated: one attempt per order.
    assert_eq!(
        a.scalar("SELECT count(*) FROM psp_attempts").await,
        ids.len() as i64
    );
    assert_eq!(
        a.scalar("SELECT count(*) FROM psp_attempts WHERE attempt <> 1 OR component_calls <> 1")
            .await,
        0
    );

    // Every phase made calls with the version then active. An order keeps
    // the adapter it was pinned to at its first call, and a busy executor
    // can pin an order a while before it claims the attempt, so calls with
    // the previous version may trail a switch: they are counted, and the
    // pin is checked exactly below.
    let done = chrono::Utc::now();
    let phases = [
        (after_activate, after_rollback, &v2),
        (after_rollback, after_poll, &v1),
        (after_poll, done, &v2),
    ];
    for (from, to, sha) in phases {
        let (right, trailing): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE component_sha256 = $3), count(*) FILTER (WHERE component_sha256 <> $3)
             FROM psp_attempts WHERE claimed_at > $1 AND claimed_at < $2",
        )
        .bind(from)
        .bind(to)
        .bind(sha)
        .fetch_one(&a.pool)
        .await
        .unwrap();
        println!("phase {from}..{to}: {right} calls with {}, {trailing} trailing on the previous version", &sha[..8]);
        assert!(right > 0, "no calls with {sha} between {from} and {to}");
    }
    assert_eq!(
        a.scalar("SELECT count(*) FROM psp_attempts a JOIN payment_orders o USING (payment_order_id) WHERE a.component_sha256 <> o.adapter_sha256").await,
        0,
        "an attempt used another adapter than its order's pinned one"
    );
    for node in ["node-a", "node-b"] {
        let with_v2: i64 = sqlx::query_scalar(
            // A claim's holder is `instance#boot` (leases tell a node's
            // earlier life from another node).
            "SELECT count(*) FROM psp_attempts WHERE split_part(node_id, '#', 1) = $1 AND component_sha256 = $2",
        )
        .bind(node)
        .bind(&v2)
        .fetch_one(&a.pool)
        .await
        .unwrap();
        assert!(with_v2 > 0, "{node} never called the new version");
    }
    b.stop().await;
    a.stop().await;
}

/// Dev mode: a changed file in the components folder is hot-reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watched_folder_hot_reloads_a_changed_component() {
    let dir = std::env::temp_dir().join(format!("paynode-watch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["psp-simulator", "retry-equal-jitter", "ledger-marketplace"] {
        std::fs::copy(component_path(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    let mut config = test_config().await;
    config.components.dir = dir.clone();
    config.components.watch = true;
    config.components.poll_interval_ms = 200;
    let node = TestNode::start(config).await;
    let v2 = simulator_v2();
    let v2_sha = paynode::components::runtime::sha256_hex(&v2);
    std::fs::write(dir.join("psp-simulator.wasm.tmp"), &v2).unwrap();
    std::fs::rename(
        dir.join("psp-simulator.wasm.tmp"),
        dir.join("psp-simulator.wasm"),
    )
    .unwrap();
    let switch = wait_switched(&[&node], &v2_sha).await;
    println!("watch: reloaded after {switch:?}");
    let actor: String =
        sqlx::query_scalar("SELECT activated_by FROM plugin_activations ORDER BY id DESC LIMIT 1")
            .fetch_one(&node.pool)
            .await
            .unwrap();
    assert_eq!(actor, "watch");
    let (_, body) = node
        .post_payment("watch-1", &payment_body("watch-1", &[("s-1", 100)]))
        .await;
    let view = node.wait_final(body["paymentId"].as_str().unwrap()).await;
    assert_eq!(
        view["paymentOrders"][0]["attempts"][0]["componentSha256"],
        v2_sha
    );
    node.stop().await;
}
