//! Data retention: Idempotency-Keys replay only within
//! `intake.idempotency_retention_secs` and are then purged in bounded
//! batches (the payments stay); cached balance hashes in Redis expire and a
//! read falls back to Postgres.

use std::time::Duration;

use paynode_tests::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_idempotency_keys_are_forgotten_and_purged() {
    let mut config = test_config().await;
    config.intake.idempotency_retention_secs = 1;
    config.intake.idempotency_purge_batch = 2;
    config.intake.idempotency_purge_interval_ms = 300;
    let node = TestNode::start(config).await;
    let body = |n: usize| payment_body(&format!("ret-order-{n}"), &[("ret-seller", 100)]);
    let mut first_ids = Vec::new();
    for n in 0..5 {
        let (status, answer) = node.post_payment(&format!("ret-key-{n}"), &body(n)).await;
        assert_eq!(status, 202, "{answer}");
        first_ids.push(answer["paymentId"].as_str().unwrap().to_string());
    }
    // Within the retention the key replays its response.
    let (status, replay) = node.post_payment("ret-key-0", &body(0)).await;
    assert_eq!(
        (status, replay["paymentId"].as_str()),
        (202, Some(first_ids[0].as_str()))
    );

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Expired: the key no longer replays. A new order under it is a new
    // payment (not 422 "key reused") ...
    let (status, fresh) = node.post_payment("ret-key-0", &body(100)).await;
    assert_eq!(status, 202, "an expired key with a new body: {fresh}");
    assert_ne!(fresh["paymentId"].as_str(), Some(first_ids[0].as_str()));
    // ... and a late retry of the first request cannot pay twice: its
    // orderId is taken for good.
    let (status, late) = node.post_payment("ret-key-1", &body(1)).await;
    assert_eq!(status, 409, "a late retry after expiry: {late}");

    // The purge task deletes every expired key (batches of 2), payments stay.
    wait_until(
        "expired idempotency keys purged",
        Duration::from_secs(15),
        || async { node.scalar("SELECT count(*) FROM idempotency_keys").await == 0 },
    )
    .await;
    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 6);
    assert_eq!(node.scalar("SELECT count(*) FROM payment_orders").await, 6);
    node.stop().await;
}

async fn balances(node: &TestNode, seller: &str) -> Value {
    node.http
        .get(format!("{}/api/v1/sellers/{seller}/balances", node.base))
        .bearer_auth(node.token(&["FINANCE"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_balances_expire_and_reads_fall_back_to_postgres() {
    let mut config = test_config().await;
    config.redis.balance_ttl_secs = 4;
    let node = TestNode::start(config).await;
    let seller = "ttl-seller";
    let (status, answer) = node
        .post_payment("ttl-key", &payment_body("ttl-order", &[(seller, 700)]))
        .await;
    assert_eq!(status, 202);
    node.wait_final(answer["paymentId"].as_str().unwrap()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cached = loop {
        let view = balances(&node, seller).await;
        if view["source"] == "cache" {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "balances never cached: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let names = paynode::kafka::Names::new(&node.config.kafka.prefix);
    let key = names.redis_key(&format!("balances:{seller}"));
    let client = redis::Client::open(node.config.redis.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=4).contains(&ttl), "TTL of {key}: {ttl}");

    tokio::time::sleep(Duration::from_secs(5)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(exists, 0, "{key} outlived its TTL");
    let fallback = balances(&node, seller).await;
    assert_eq!(fallback["source"], "database", "{fallback}");
    assert_eq!(fallback["accounts"], cached["accounts"]);
    node.stop().await;
}
