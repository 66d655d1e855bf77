//! Refunds and PSP notifications on the real services: partial + partial +
//! over-refund (422) + full, with the seller's balance down by what was
//! refunded and every journal balanced; concurrent requests never exceed
//! the capture; a transient refund is retried through the retry queue; an
//! unknown one is settled by `refund-status`, or later by the review
//! janitor's `refund-status`; an order charged by a
//! psp-adapter 1.0.0 answers a clear 422; webhooks: a bad signature is a
//! 401 that changes nothing, a signed one settles a REQUIRES_REVIEW order
//! and an unknown (REQUIRES_REVIEW) refund, a duplicate changes nothing,
//! and a contradiction never overturns a final outcome.

use std::time::Duration;

use hmac::{Hmac, Mac};
use paynode_tests::*;
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

const WEBHOOK_SECRET: &str = "whsec_refund_tests";

/// Pays `amount` to seller `seller` and waits until the order is final.
async fn paid_order(node: &TestNode, seller: &str, amount: i64) -> (String, String, Value) {
    let order = format!("order-{}", Uuid::new_v4());
    let (status, body) = node
        .post_payment(
            &format!("key-{order}"),
            &payment_body(&order, &[(seller, amount)]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let payment_id = body["paymentId"].as_str().unwrap().to_string();
    let view = node.wait_final(&payment_id).await;
    let order_id = view["paymentOrders"][0]["paymentOrderId"]
        .as_str()
        .unwrap()
        .to_string();
    let order_view = view["paymentOrders"][0].clone();
    (payment_id, order_id, order_view)
}

async fn post_refund(node: &TestNode, order_id: &str, key: &str, amount: i64) -> (u16, Value) {
    let response = node
        .http
        .post(format!(
            "{}/api/v1/payment-orders/{order_id}/refunds",
            node.base
        ))
        .bearer_auth(node.token(&["payment:write"]))
        .header("Idempotency-Key", key)
        .json(&json!({ "amount": { "quantity": amount, "currency": "EUR" }, "reason": "returned" }))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_refund(node: &TestNode, id: &str) -> Value {
    node.http
        .get(format!("{}/api/v1/refunds/{id}", node.base))
        .bearer_auth(node.token(&["payment:write"]))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

async fn wait_refund(node: &TestNode, id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = get_refund(node, id).await;
        if last["status"] == status {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("refund {id} never reached {status}: {last:#}");
}

/// The seller's merchant balance (credit side), from the balances table.
async fn merchant_balance(node: &TestNode, seller: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT credit_minor - debit_minor FROM account_balances WHERE account_code = $1",
    )
    .bind(format!("MERCHANT_ACCOUNT.{seller}.EUR"))
    .fetch_optional(&node.pool)
    .await
    .unwrap()
    .flatten()
    .unwrap_or(0)
}

async fn wait_balance(node: &TestNode, seller: &str, want: i64) {
    let node_ref = node;
    wait_until(
        &format!("{seller}'s balance to reach {want}"),
        Duration::from_secs(30),
        || async move { merchant_balance(node_ref, seller).await == want },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_partial_over_full_and_the_balance_follows() {
    let node = TestNode::start(test_config().await).await;
    let (payment_id, order_id, order) = paid_order(&node, "s-1", 1_000).await;
    assert_eq!(order["status"], "SUCCEEDED");
    wait_balance(&node, "s-1", 1_000).await;

    let (status, first) = post_refund(&node, &order_id, "rf-a", 300).await;
    assert_eq!(status, 202, "{first}");
    // Same key, same body: the first answer again; another body: 422.
    let (status, again) = post_refund(&node, &order_id, "rf-a", 300).await;
    assert_eq!((status, &again["refundId"]), (202, &first["refundId"]));
    let (status, reused) = post_refund(&node, &order_id, "rf-a", 301).await;
    assert_eq!(status, 422, "{reused}");
    let (status, second) = post_refund(&node, &order_id, "rf-b", 300).await;
    assert_eq!(status, 202, "{second}");
    let (status, over) = post_refund(&node, &order_id, "rf-c", 500).await;
    assert_eq!(status, 422, "{over}");
    assert_eq!(
        over["type"].as_str().unwrap_or(""),
        "https://paynode.dev/problems/over-refund",
        "{over}"
    );
    let (status, full) = post_refund(&node, &order_id, "rf-d", 400).await;
    assert_eq!(status, 202, "{full}");
    for refund in [&first, &second, &full] {
        wait_refund(&node, refund["refundId"].as_str().unwrap(), "SUCCEEDED").await;
    }
    let (status, beyond) = post_refund(&node, &order_id, "rf-e", 1).await;
    assert_eq!(status, 422, "{beyond}");

    let view = node.get_payment(&payment_id).await;
    let refunds = view["paymentOrders"][0]["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 3, "{view:#}");
    wait_balance(&node, "s-1", 0).await;
    let unbalanced = node
        .scalar(
            "SELECT count(*) FROM (SELECT journal_id FROM postings GROUP BY journal_id
               HAVING sum(CASE WHEN side = 'debit' THEN amount_minor ELSE -amount_minor END) <> 0) j",
        )
        .await;
    assert_eq!(unbalanced, 0);
    let refund_journals = node
        .scalar("SELECT count(*) FROM journal_entries WHERE kind = 'REFUND'")
        .await;
    assert_eq!(refund_journals, 3);
    for check in paynode::store::reconcile::checks(&node.pool, 3600)
        .await
        .unwrap()
    {
        assert_eq!(check.breaches, 0, "{}: {}", check.name, check.detail);
    }
    // Metrics are per process (other tests of this file add to them).
    let metrics = node.metrics_text().await;
    assert!(
        metrics.contains("refunds_total{result=\"succeeded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("refunds_total{result=\"rejected\"}"),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_never_exceed_the_capture() {
    let node = TestNode::start(test_config().await).await;
    let (_, order_id, _) = paid_order(&node, "s-2", 1_000).await;
    let requests = (0..10).map(|n| {
        let (node, order_id) = (&node, order_id.clone());
        async move {
            post_refund(node, &order_id, &format!("race-{n}"), 300)
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(requests).await;
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 422).count();
    assert_eq!((accepted, refused), (3, 7), "{statuses:?}");
    let held = node
        .scalar("SELECT coalesce(sum(amount_minor), 0)::bigint FROM refunds")
        .await;
    assert_eq!(held, 900);
    node.stop().await;
}

/// Drops this node's retry queue from Redis, as a Redis restarted empty
/// would (it keeps nothing on disk); how many keys it removed.
async fn forget_retries(node: &TestNode) -> i64 {
    let client = redis::Client::open(node.config.redis.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ["queue", "inflight", "payloads"]
        .iter()
        .map(|k| format!("{}paynode:retry:{k}", node.config.kafka.prefix))
        .collect();
    redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// A refund's retry lost from Redis is rebuilt from Postgres by the
/// sweeper (as an order's is): the refund still settles, with one more
/// attempt, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_retry_lost_by_redis_is_rebuilt_from_postgres() {
    let mut config = scripted_config("succeeded", "succeeded", 6_000).await;
    config
        .components
        .psp_adapter
        .config
        .insert("refund-script".into(), "transient,succeeded".into());
    config.retry.sweep_grace_ms = 500;
    let node = TestNode::start(config).await;
    let (_, order_id, _) = paid_order(&node, "s-9", 1_000).await;
    let (status, refund) = post_refund(&node, &order_id, "lost-retry", 250).await;
    assert_eq!(status, 202, "{refund}");
    let id = refund["refundId"].as_str().unwrap().to_string();
    // Attempt 1 answered transient: its retry waits in Redis, 3 to 6 s out.
    let waiting = format!(
        "SELECT count(*) FROM refunds
         WHERE refund_id = '{id}' AND status = 'REQUESTED' AND last_applied_attempt = 1"
    );
    wait_until("attempt 1 applied", Duration::from_secs(30), || async {
        node.scalar(&waiting).await == 1
    })
    .await;
    assert!(forget_retries(&node).await >= 2, "the retry was in Redis");
    let done = wait_refund(&node, &id, "SUCCEEDED").await;
    assert!(done["pspReference"].as_str().unwrap().starts_with("simrf_"));
    let attempts = node
        .scalar(&format!(
            "SELECT count(*) FROM refund_attempts WHERE refund_id = '{id}'"
        ))
        .await;
    assert_eq!(attempts, 2, "one transient attempt, one rebuilt retry");
    wait_balance(&node, "s-9", 750).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_refund_is_retried_and_an_unknown_one_settled_by_status() {
    let mut config = scripted_config("succeeded", "succeeded", 50).await;
    config
        .components
        .psp_adapter
        .config
        .insert("refund-script".into(), "transient,succeeded".into());
    let node = TestNode::start(config).await;
    let (_, order_id, _) = paid_order(&node, "s-3", 1_000).await;
    let (status, refund) = post_refund(&node, &order_id, "transient", 250).await;
    assert_eq!(status, 202, "{refund}");
    let id = refund["refundId"].as_str().unwrap();
    let done = wait_refund(&node, id, "SUCCEEDED").await;
    assert!(done["pspReference"].as_str().unwrap().starts_with("simrf_"));
    let attempts = node
        .scalar(&format!(
            "SELECT count(*) FROM refund_attempts WHERE refund_id = '{id}'"
        ))
        .await;
    assert_eq!(attempts, 2, "one transient attempt, one retried");
    node.stop().await;

    let mut config = scripted_config("succeeded", "succeeded", 50).await;
    let adapter = &mut config.components.psp_adapter.config;
    adapter.insert("refund-script".into(), "unknown".into());
    adapter.insert("refund-status-script".into(), "succeeded".into());
    let node = TestNode::start(config).await;
    let (_, order_id, _) = paid_order(&node, "s-4", 1_000).await;
    let (status, refund) = post_refund(&node, &order_id, "unknown", 250).await;
    assert_eq!(status, 202, "{refund}");
    let id = refund["refundId"].as_str().unwrap();
    wait_refund(&node, id, "SUCCEEDED").await;
    let settled = node
        .scalar(&format!(
            "SELECT count(*) FROM refund_attempts WHERE refund_id = '{id}' AND settled_by_status"
        ))
        .await;
    assert_eq!(settled, 1);
    wait_balance(&node, "s-4", 750).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_review_janitor_asks_again_and_settles_a_refund_left_unknown() {
    // The simulator answers a refund's `refund-status` by the refund's
    // attempt, the same for every asker; so a PSP that "learns" the answer
    // later is two nodes. First it never knows: the janitor asks on its
    // schedule (1 s, 1 s), then leaves the refund in review.
    let mut config = scripted_config("succeeded", "succeeded", 50).await;
    let adapter = &mut config.components.psp_adapter.config;
    adapter.insert("refund-script".into(), "unknown".into());
    adapter.insert("refund-status-script".into(), "unknown".into());
    config.psp.status_checks = 1;
    config.psp.review_schedule_secs = vec![1, 1];
    config.psp.review_poll_ms = 200;
    let node = TestNode::start(config).await;
    let (_, order_id, _) = paid_order(&node, "s-7", 1_000).await;
    let (status, refund) = post_refund(&node, &order_id, "janitor-unknown", 300).await;
    assert_eq!(status, 202, "{refund}");
    let id = refund["refundId"].as_str().unwrap().to_string();
    wait_refund(&node, &id, "REQUIRES_REVIEW").await;
    let spent = format!(
        "SELECT count(*) FROM refunds WHERE refund_id = '{id}' AND status = 'REQUIRES_REVIEW'
           AND review_checks = 2 AND next_review_at IS NULL"
    );
    let node_ref = &node;
    wait_until(
        "two janitor checks, then the schedule spent",
        Duration::from_secs(30),
        || {
            let spent = spent.clone();
            async move { node_ref.scalar(&spent).await == 1 }
        },
    )
    .await;
    assert_eq!(
        node.scalar(&format!(
            "SELECT count(*) FROM refund_attempts WHERE refund_id = '{id}'"
        ))
        .await,
        1,
        "the janitor only asks refund-status, it never refunds again"
    );
    let metrics = node.metrics_text().await;
    for result in ["still_unknown", "left_to_admin"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("review_janitor_checks_total")
                    && l.contains("subject=\"refund\"")
                    && l.contains(&format!("result=\"{result}\""))),
            "{metrics}"
        );
    }
    node.stop().await;

    // Then a PSP that knows by the janitor's first check: the executor
    // asks nothing (no status checks), the janitor's refund-status settles
    // the refund and its journal reaches the seller's balance.
    let mut config = scripted_config("succeeded", "succeeded", 50).await;
    let adapter = &mut config.components.psp_adapter.config;
    adapter.insert("refund-script".into(), "unknown".into());
    adapter.insert("refund-status-script".into(), "succeeded".into());
    config.psp.status_checks = 0;
    config.psp.review_schedule_secs = vec![1, 1, 1];
    config.psp.review_poll_ms = 200;
    let node = TestNode::start(config).await;
    let (_, order_id, _) = paid_order(&node, "s-8", 1_000).await;
    wait_balance(&node, "s-8", 1_000).await;
    let (status, refund) = post_refund(&node, &order_id, "janitor-settles", 400).await;
    assert_eq!(status, 202, "{refund}");
    let id = refund["refundId"].as_str().unwrap().to_string();
    let done = wait_refund(&node, &id, "SUCCEEDED").await;
    assert!(
        done["pspReference"].as_str().unwrap().starts_with("simrf_"),
        "{done:#}"
    );
    assert_eq!(
        node.scalar(&format!(
            "SELECT count(*) FROM refund_attempts WHERE refund_id = '{id}' AND NOT settled_by_status"
        ))
        .await,
        1,
        "one refund call, its unknown outcome not settled by the executor"
    );
    assert_eq!(
        node.scalar(&format!(
            "SELECT count(*) FROM refunds WHERE refund_id = '{id}' AND next_review_at IS NULL"
        ))
        .await,
        1,
        "a settled refund has no janitor check left"
    );
    wait_balance(&node, "s-8", 600).await;
    assert_eq!(
        node.scalar(&format!(
            "SELECT count(*) FROM journal_entries j JOIN refunds r ON j.source_event_id = r.finalized_event_id
             WHERE r.refund_id = '{id}'"
        ))
        .await,
        1
    );
    let metrics = node.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("review_janitor_checks_total")
                && l.contains("subject=\"refund\"")
                && l.contains("result=\"succeeded\"")),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_charged_by_a_v1_adapter_still_charges_and_refuses_refunds_clearly() {
    let mut config = test_config().await;
    config.components.psp_adapter.default_component = "psp-simulator-v1".into();
    let node = TestNode::start(config).await;
    let (_, order_id, order) = paid_order(&node, "s-5", 1_000).await;
    assert_eq!(order["status"], "SUCCEEDED", "{order}");
    let (status, problem) = post_refund(&node, &order_id, "v1", 100).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("adapter version does not support refunds"),
        "{problem}"
    );
    assert_eq!(node.scalar("SELECT count(*) FROM refunds").await, 0);
    node.stop().await;
}

fn signed(body: &str, secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn webhook(node: &TestNode, body: &str, signature: &str) -> (u16, Value) {
    let response = node
        .http
        .post(format!("{}/api/v1/webhooks/psp-adapter", node.base))
        .header("x-sim-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn psp_key(node: &TestNode, table: &str, id_column: &str, id: &str) -> String {
    sqlx::query_scalar(&format!(
        "SELECT psp_idempotency_key FROM {table} WHERE {id_column}::text = $1"
    ))
    .bind(id)
    .fetch_one(&node.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_settle_reviews_once_and_never_overturn_a_final_outcome() {
    let mut config = scripted_config("unknown", "unknown", 50).await;
    let adapter = &mut config.components.psp_adapter.config;
    adapter.insert("refund-script".into(), "unknown".into());
    adapter.insert("refund-status-script".into(), "unknown".into());
    config.secrets.insert(
        "sim_webhook_secret".into(),
        WEBHOOK_SECRET.to_string().into(),
    );
    let node = TestNode::start(config).await;
    let (payment_id, order_id, order) = paid_order(&node, "s-6", 1_000).await;
    assert_eq!(order["status"], "REQUIRES_REVIEW", "{order}");
    let key = psp_key(&node, "payment_orders", "payment_order_id", &order_id).await;

    let body = format!("id=evt_charge_1&type=charge.succeeded&key={key}&reference=psp_ch_1");
    let (status, problem) = webhook(&node, &body, &signed(&body, "a guess")).await;
    assert_eq!(status, 401, "{problem}");
    let view = node.get_payment(&payment_id).await;
    assert_eq!(view["paymentOrders"][0]["status"], "REQUIRES_REVIEW");
    assert_eq!(
        node.scalar("SELECT count(*) FROM psp_notifications").await,
        0
    );

    let (status, handled) = webhook(&node, &body, &signed(&body, WEBHOOK_SECRET)).await;
    assert_eq!(status, 200, "{handled}");
    assert_eq!(handled["results"][0]["result"], "applied", "{handled}");
    let view = node.get_payment(&payment_id).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED");
    assert_eq!(view["paymentOrders"][0]["pspReference"], "psp_ch_1");
    wait_balance(&node, "s-6", 1_000).await;

    let (status, handled) = webhook(&node, &body, &signed(&body, WEBHOOK_SECRET)).await;
    assert_eq!(
        (status, &handled["results"][0]["result"]),
        (200, &json!("duplicate"))
    );
    let contradiction = format!("id=evt_charge_2&type=charge.failed&key={key}&message=declined");
    let (_, handled) = webhook(
        &node,
        &contradiction,
        &signed(&contradiction, WEBHOOK_SECRET),
    )
    .await;
    assert_eq!(handled["results"][0]["result"], "contradicted", "{handled}");
    let view = node.get_payment(&payment_id).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED");

    // An unknown refund (status checks did not settle it) is in review
    // until the PSP's notification arrives.
    let (status, refund) = post_refund(&node, &order_id, "review", 400).await;
    assert_eq!(status, 202, "{refund}");
    let refund_id = refund["refundId"].as_str().unwrap();
    wait_refund(&node, refund_id, "REQUIRES_REVIEW").await;
    let refund_key = psp_key(&node, "refunds", "refund_id", refund_id).await;
    let body = format!("id=evt_refund_1&type=refund.succeeded&key={refund_key}&reference=psp_rf_1");
    let (status, handled) = webhook(&node, &body, &signed(&body, WEBHOOK_SECRET)).await;
    assert_eq!(
        (status, &handled["results"][0]["result"]),
        (200, &json!("applied")),
        "{handled}"
    );
    let done = wait_refund(&node, refund_id, "SUCCEEDED").await;
    assert_eq!(done["pspReference"], "psp_rf_1");
    wait_balance(&node, "s-6", 600).await;
    let (_, handled) = webhook(&node, &body, &signed(&body, WEBHOOK_SECRET)).await;
    assert_eq!(handled["results"][0]["result"], "duplicate");
    assert_eq!(
        node.scalar("SELECT count(*) FROM journal_entries WHERE kind = 'REFUND'")
            .await,
        1
    );
    node.stop().await;
}
