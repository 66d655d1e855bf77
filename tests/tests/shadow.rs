//! A shadow posting-rules candidate runs beside the active rules on live
//! traffic: its journals are compared and counted (`component_shadow_total`),
//! never applied, and a broken candidate never stops or parks an order.

use std::time::{Duration, Instant};

use paynode::components::Slot;
use paynode::store::plugins;
use paynode_tests::*;

/// One test at a time: the shadow counters are per process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn shadow_count(node: &TestNode, result: &str) -> u64 {
    node.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("component_shadow_total{"))
        .filter(|l| {
            l.contains("slot=\"posting-rules\"") && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn set_shadow(node: &TestNode, sha: Option<&str>) {
    plugins::set_shadow(
        &node.pool,
        "posting-rules",
        sha,
        &serde_json::json!({}),
        "test",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node
        .node
        .registry
        .shadow(Slot::PostingRules)
        .map(|s| s.loaded.sha256.clone())
        .as_deref()
        != sha
    {
        assert!(
            Instant::now() < deadline,
            "shadow {sha:?} never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pay_and_record(node: &TestNode, key: &str, sellers: &[(&str, i64)]) {
    let before = node.scalar("SELECT count(*) FROM ledger_recordings").await;
    let (status, body) = node.post_payment(key, &payment_body(key, sellers)).await;
    assert_eq!(status, 202, "{body}");
    let want = before + sellers.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.scalar("SELECT count(*) FROM ledger_recordings").await < want {
        assert!(Instant::now() < deadline, "{key} never reached the ledger");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_rules_are_compared_and_counted_never_applied() {
    let _one = SERIAL.lock().await;
    let node = TestNode::start(test_config().await).await;
    // The counters are per process: what this test adds to them.
    let mut at_start = std::collections::HashMap::new();
    for result in ["same", "changed", "rejected"] {
        at_start.insert(result, shadow_count(&node, result).await);
    }
    let counted = |result: &'static str| {
        let (node, before) = (&node, at_start[result]);
        async move { shadow_count(node, result).await - before }
    };
    // The template with its fixtures; the hostile rules (no fixtures to
    // pass) stored the way the node stores its own files.
    let push = |name: &'static str, fixtures: Option<&'static str>| {
        let registry = node.node.registry.clone();
        async move {
            let bytes = std::fs::read(component_path(name)).unwrap();
            let stored = match fixtures {
                Some(dir) => {
                    let fixtures = fixtures_of(dir);
                    registry
                        .push(Slot::PostingRules, &bytes, &fixtures, "test")
                        .await
                }
                None => registry.install(Slot::PostingRules, &bytes, "test").await,
            };
            stored.unwrap().sha256
        }
    };
    let active = node.node.registry.snapshot()["posting-rules"].0.clone();
    let template = push(
        "template-posting-rules",
        Some("plugins/template-posting-rules/fixtures"),
    )
    .await;
    let unbalanced = push("hostile-unbalanced", None).await;

    // Different valid rules: counted as changed, ledger untouched by them.
    set_shadow(&node, Some(&template)).await;
    pay_and_record(&node, "shadow-1", &[("s-a", 1000), ("s-b", 2000)]).await;
    assert_eq!(counted("changed").await, 2);
    let foreign = format!(
        "SELECT count(*) FROM journal_entries WHERE rule_sha256 <> '{active}' OR kind NOT IN ('AUTH', 'CAPTURE')"
    );
    assert_eq!(
        node.scalar(&foreign).await,
        0,
        "shadow journals were applied"
    );
    assert_eq!(node.scalar("SELECT count(*) FROM journal_entries").await, 4);

    // The active rules as their own shadow: same.
    set_shadow(&node, Some(&active)).await;
    pay_and_record(&node, "shadow-2", &[("s-c", 500)]).await;
    assert_eq!(counted("same").await, 1);

    // A broken candidate: rejected, but the order is recorded as usual.
    set_shadow(&node, Some(&unbalanced)).await;
    pay_and_record(&node, "shadow-3", &[("s-d", 700)]).await;
    assert_eq!(counted("rejected").await, 1);
    assert_eq!(
        node.scalar("SELECT count(*) FROM payment_orders WHERE status <> 'SUCCEEDED'")
            .await,
        0
    );

    // Off: nothing more is counted.
    set_shadow(&node, None).await;
    pay_and_record(&node, "shadow-4", &[("s-e", 300)]).await;
    let total: u64 = [
        counted("same").await,
        counted("changed").await,
        counted("rejected").await,
    ]
    .iter()
    .sum();
    assert_eq!(total, 4);
    assert_eq!(
        node.scalar("SELECT count(*) FROM journal_entries").await,
        10,
        "AUTH + CAPTURE for each of the 5 orders, nothing else"
    );
    assert_eq!(node.scalar(&foreign).await, 0);
    node.stop().await;
}

/// A refund's journals go through the shadow candidate's `post-refund` as
/// well: compared and counted once, never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_candidate_sees_refunds_too() {
    let _one = SERIAL.lock().await;
    let node = TestNode::start(test_config().await).await;
    pay_and_record(&node, "shadow-refund", &[("s-r", 1000)]).await;
    let active = node.node.registry.snapshot()["posting-rules"].0.clone();
    set_shadow(&node, Some(&active)).await;
    let same = shadow_count(&node, "same").await;
    let order_id: String = sqlx::query_scalar(
        "SELECT payment_order_id::text FROM payment_orders WHERE seller_id = 's-r'",
    )
    .fetch_one(&node.pool)
    .await
    .unwrap();
    let response = node
        .http
        .post(format!(
            "{}/api/v1/payment-orders/{order_id}/refunds",
            node.base
        ))
        .bearer_auth(node.token(&["payment:write"]))
        .header("Idempotency-Key", "shadow-refund-1")
        .json(&serde_json::json!({
            "amount": { "quantity": 400, "currency": "EUR" }, "reason": "returned"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let refunds = "SELECT count(*) FROM journal_entries WHERE kind = 'REFUND'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.scalar(refunds).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the refund never reached the ledger"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shadow_count(&node, "same").await, same + 1);
    assert_eq!(
        node.scalar(refunds).await,
        1,
        "the shadow's journal was applied"
    );
    node.stop().await;
}
