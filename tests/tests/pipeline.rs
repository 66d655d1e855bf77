//! The whole flow on real services: intake → PSP (simulator component,
//! scripted) → retries → finalization → ledger → balances, plus redelivery,
//! DLQ and review handling.

use std::time::Duration;

use paynode::config::Config;
use paynode_tests::*;
use serde_json::{json, Value};

async fn scripted(script: &str, status_script: &str) -> Config {
    // Short backoff so retries happen in milliseconds.
    let mut config = scripted_config(script, status_script, 50).await;
    config
        .components
        .retry_policy
        .config
        .insert("cap-ms".into(), "400".into());
    config
}

async fn pay(node: &TestNode, sellers: &[(&str, i64)]) -> (String, Vec<String>) {
    let order = format!("order-{}", uuid::Uuid::new_v4());
    let (status, body) = node
        .post_payment(&format!("key-{order}"), &payment_body(&order, sellers))
        .await;
    assert_eq!(status, 202, "{body}");
    let orders = body["paymentOrders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["paymentOrderId"].as_str().unwrap().to_string())
        .collect();
    (body["paymentId"].as_str().unwrap().to_string(), orders)
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

async fn merchant_balance(node: &TestNode, seller: &str) -> i64 {
    let view = balances(node, seller).await;
    view["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == format!("MERCHANT_ACCOUNT.{seller}.EUR"))
        .map_or(0, |a| a["balanceMinor"].as_i64().unwrap())
}

async fn count(node: &TestNode, sql: &str, order: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(uuid::Uuid::parse_str(order).unwrap())
        .fetch_one(&node.pool)
        .await
        .unwrap()
}

async fn reconcile_clean(node: &TestNode) {
    let checks = paynode::cli::reconcile::checks(&node.pool, 300)
        .await
        .unwrap();
    for check in &checks {
        assert_eq!(check.breaches, 0, "reconcile breach: {check:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_seller_payment_reaches_balanced_journals_and_balances() {
    let node = TestNode::start(test_config().await).await;
    let sellers = [("seller-a", 1_000), ("seller-b", 2_500), ("seller-c", 333)];
    let (payment, orders) = pay(&node, &sellers).await;
    let view = node.wait_final(&payment).await;
    assert_eq!(view["status"], "SUCCEEDED", "{view:#}");
    for (seller, amount) in sellers {
        let node = &node;
        wait_until("seller balance", Duration::from_secs(30), || async move {
            merchant_balance(node, seller).await == amount
        })
        .await;
    }
    for order in &orders {
        assert_eq!(
            count(
                &node,
                "SELECT count(*) FROM journal_entries WHERE payment_order_id = $1",
                order
            )
            .await,
            2
        );
        assert_eq!(
            count(
                &node,
                "SELECT count(*) FROM ledger_recordings WHERE payment_order_id = $1",
                order
            )
            .await,
            1
        );
    }
    // Platform accounts: PSP receivables hold the total; AUTH accounts net to zero.
    let psp_receivable = node.scalar("SELECT debit_minor - credit_minor FROM account_balances WHERE account_code = 'PSP_RECEIVABLES.GLOBAL.EUR'").await;
    assert_eq!(psp_receivable, 3_833);
    let auth = node.scalar("SELECT debit_minor - credit_minor FROM account_balances WHERE account_code = 'AUTH_RECEIVABLE.GLOBAL.EUR'").await;
    assert_eq!(auth, 0);
    // The ledger rows carry the intake trace id and the rule's sha.
    let trace = view["traceId"].as_str().unwrap();
    let traced = node
        .scalar(&format!(
            "SELECT count(*) FROM journal_entries WHERE trace_id = '{trace}'"
        ))
        .await;
    assert_eq!(traced, 6);
    let rule_sha = sha256_file(&component_path("ledger-marketplace"));
    let by_rule = node
        .scalar(&format!(
            "SELECT count(*) FROM journal_entries WHERE rule_sha256 = '{rule_sha}'"
        ))
        .await;
    assert_eq!(by_rule, 6);
    reconcile_clean(&node).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decline_fails_the_order_without_postings() {
    let node = TestNode::start(scripted("declined", "declined").await).await;
    let (payment, orders) = pay(&node, &[("s-1", 500)]).await;
    let view = node.wait_final(&payment).await;
    assert_eq!(view["paymentOrders"][0]["status"], "FAILED");
    assert_eq!(
        count(
            &node,
            "SELECT count(*) FROM psp_attempts WHERE payment_order_id = $1",
            &orders[0]
        )
        .await,
        1
    );
    wait_until("ledger recording", Duration::from_secs(30), || async {
        count(
            &node,
            "SELECT count(*) FROM ledger_recordings WHERE payment_order_id = $1",
            &orders[0],
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        count(
            &node,
            "SELECT count(*) FROM journal_entries WHERE payment_order_id = $1",
            &orders[0]
        )
        .await,
        0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transients_then_success_takes_three_calls_with_backoff() {
    let node = TestNode::start(scripted("transient,transient,succeeded", "succeeded").await).await;
    let (payment, orders) = pay(&node, &[("s-1", 900)]).await;
    let view = node.wait_final(&payment).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    let attempts = view["paymentOrders"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    let kinds: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["transient", "transient", "succeeded"]);
    // Equal jitter with base 50 ms: retry n waits at least h/2 = 25, 50 ms.
    let gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM b.claimed_at - a.finished_at)::float8 FROM psp_attempts a JOIN psp_attempts b
           ON b.payment_order_id = a.payment_order_id AND b.attempt = a.attempt + 1
         WHERE a.payment_order_id = $1 ORDER BY a.attempt",
    )
    .bind(uuid::Uuid::parse_str(&orders[0]).unwrap())
    .fetch_all(&node.pool)
    .await
    .unwrap();
    assert_eq!(gaps.len(), 2);
    assert!(
        gaps[0] >= 0.025 && gaps[1] >= 0.050,
        "backoff not honoured: {gaps:?}"
    );
    wait_until("balance", Duration::from_secs(30), || async {
        merchant_balance(&node, "s-1").await == 900
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_transient_gives_up_after_six_calls() {
    let node = TestNode::start(scripted("transient", "succeeded").await).await;
    let (payment, orders) = pay(&node, &[("s-1", 900)]).await;
    let view = node.wait_final(&payment).await;
    let order = &view["paymentOrders"][0];
    assert_eq!(order["status"], "FAILED", "{view:#}");
    assert_eq!(order["attempts"].as_array().unwrap().len(), 6);
    assert!(
        order["failureReason"]
            .as_str()
            .unwrap()
            .contains("max retries"),
        "{order}"
    );
    wait_until("ledger recording", Duration::from_secs(30), || async {
        count(
            &node,
            "SELECT count(*) FROM ledger_recordings WHERE payment_order_id = $1",
            &orders[0],
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        count(
            &node,
            "SELECT count(*) FROM journal_entries WHERE payment_order_id = $1",
            &orders[0]
        )
        .await,
        0
    );
    let finalized = read_topic(&brokers(), &node.topic("payment_order_finalized_topic"));
    let failed: Vec<_> = finalized
        .iter()
        .filter(|r| r.key.as_deref() == Some(orders[0].as_str()))
        .collect();
    assert!(failed.iter().all(|r| r.value["data"]["status"] == "FAILED") && !failed.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_settled_by_status_is_not_charged_twice() {
    let node = TestNode::start(scripted("unknown", "succeeded").await).await;
    let (payment, orders) = pay(&node, &[("s-1", 1_200)]).await;
    let view = node.wait_final(&payment).await;
    let order = &view["paymentOrders"][0];
    assert_eq!(order["status"], "SUCCEEDED", "{view:#}");
    assert_eq!(
        order["attempts"].as_array().unwrap().len(),
        1,
        "a second charge was attempted"
    );
    assert_eq!(order["attempts"][0]["settledByStatus"], true);
    // One charge + one status query, no second charge.
    assert_eq!(
        count(
            &node,
            "SELECT sum(component_calls)::bigint FROM psp_attempts WHERE payment_order_id = $1",
            &orders[0]
        )
        .await,
        2
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_that_never_settles_requires_review_and_an_admin_resolves_it() {
    let node = TestNode::start(scripted("unknown", "unknown").await).await;
    let (payment, orders) = pay(&node, &[("s-1", 1_500)]).await;
    let view = node.wait_final(&payment).await;
    assert_eq!(
        view["paymentOrders"][0]["status"], "REQUIRES_REVIEW",
        "{view:#}"
    );
    assert_eq!(view["status"], "REQUIRES_REVIEW");
    assert_eq!(
        count(
            &node,
            "SELECT count(*) FROM psp_attempts WHERE payment_order_id = $1",
            &orders[0]
        )
        .await,
        1
    );

    let url = format!(
        "{}/api/v1/admin/payment-orders/{}/resolve",
        node.base, orders[0]
    );
    let body = json!({ "status": "SUCCEEDED", "pspReference": "psp-manual-1", "reason": "confirmed in PSP dashboard" });
    let refused = node
        .http
        .post(&url)
        .bearer_auth(node.token(&["payment:write"]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let resolved = node
        .http
        .post(&url)
        .bearer_auth(node.token(&["ADMIN"]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status().as_u16(), 204);
    wait_until(
        "balance after resolution",
        Duration::from_secs(30),
        || async { merchant_balance(&node, "s-1").await == 1_500 },
    )
    .await;
    assert_eq!(
        node.scalar("SELECT count(*) FROM admin_audit WHERE action = 'resolve-review'")
            .await,
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_request_while_the_first_is_in_flight_gets_409() {
    let mut config = test_config().await;
    config.failpoints.intake_hold_ms = 1_500;
    let node = TestNode::start(config).await;
    let body = payment_body("o-inflight", &[("s-1", 100)]);
    let (first, second) = tokio::join!(node.post_payment("same-key", &body), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.http
            .post(format!("{}/api/v1/payments", node.base))
            .bearer_auth(node.token(&["payment:write"]))
            .header("Idempotency-Key", "same-key")
            .json(&body)
            .send()
            .await
            .unwrap()
    });
    // Whichever took the key's lock first wins; the other is told to retry.
    let second_status = second.status().as_u16();
    let retry_after = second
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let mut statuses = [first.0, second_status];
    statuses.sort();
    assert_eq!(statuses, [202, 409]);
    if second_status == 409 {
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 1);
    node.stop().await;
}
