//! The money-safety holes a review found in pipeline v1, each shown on the
//! real services: an order keeps the adapter activation (and so the config)
//! of its first call; a parked order is neither charged nor re-pinned by a
//! queued retry; an aborted dead letter never parks its order; a trap after
//! a request left is an unknown outcome, not a parking; a second claim
//! holder waits out the first one's lease but takes its outcome as soon as
//! it lands; a guarded update that applied
//! nothing produces nothing; only the next attempt is charged; a poisoned
//! balance is dead-lettered while every other balance moves; the review
//! janitor settles an unknown outcome by `status`.

use std::time::Duration;

use paynode::components::Slot;
use paynode::domain::events::{event_type, Envelope, OrderRef, PspCallRequested};
use paynode::domain::money::Money;
use paynode::store::plugins;
use paynode_tests::*;
use serde_json::json;
use uuid::Uuid;

/// Posts one payment and returns (payment id, its first order id).
async fn pay_one(node: &TestNode, seller: &str, amount: i64) -> (String, Uuid) {
    let order = format!("order-{}", Uuid::new_v4());
    let (status, body) = node
        .post_payment(
            &format!("key-{order}"),
            &payment_body(&order, &[(seller, amount)]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let order_id = body["paymentOrders"][0]["paymentOrderId"].as_str().unwrap();
    (
        body["paymentId"].as_str().unwrap().to_string(),
        order_id.parse().unwrap(),
    )
}

async fn int(node: &TestNode, sql: &str, order: Uuid) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .bind(order)
        .fetch_one(&node.pool)
        .await
        .expect(sql)
}

async fn text(node: &TestNode, sql: &str, order: Uuid) -> Option<String> {
    sqlx::query_scalar::<_, Option<String>>(sql)
        .bind(order)
        .fetch_one(&node.pool)
        .await
        .expect(sql)
}

async fn status_of(node: &TestNode, order: Uuid) -> String {
    text(
        node,
        "SELECT status FROM payment_orders WHERE payment_order_id = $1",
        order,
    )
    .await
    .unwrap()
}

async fn attempts_of(node: &TestNode, order: Uuid) -> i64 {
    int(
        node,
        "SELECT count(*) FROM psp_attempts WHERE payment_order_id = $1",
        order,
    )
    .await
    .unwrap()
}

/// Waits until attempt 1's transient result is applied (a retry is due).
async fn wait_retry_scheduled(node: &TestNode, order: Uuid) {
    wait_until("attempt 1 applied", Duration::from_secs(20), || async {
        int(
            node,
            "SELECT next_attempt::bigint FROM payment_orders WHERE payment_order_id = $1",
            order,
        )
        .await
            == Some(2)
    })
    .await;
}

/// Activates `sha` with `config` and waits until this node runs it.
async fn activate(node: &TestNode, sha: &str, config: serde_json::Value) -> i64 {
    let activation = plugins::activate(
        &node.pool,
        "psp-adapter",
        sha,
        &config,
        None,
        "activate",
        "test",
    )
    .await
    .unwrap();
    let registry = node.node.registry.clone();
    wait_until(
        "activation reaches the node",
        Duration::from_secs(10),
        || {
            let registry = registry.clone();
            async move {
                registry
                    .active(Slot::PspAdapter)
                    .is_ok_and(|a| a.activation_id == activation.id)
            }
        },
    )
    .await;
    activation.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_order_keeps_its_activation_config_after_a_reactivation() {
    let node =
        TestNode::start(scripted_config("transient,succeeded", "succeeded", 1_500).await).await;
    let (payment, order) = pay_one(&node, "seller-pin", 1_000).await;
    wait_retry_scheduled(&node, order).await;
    // The same component, re-activated with another config: had the retry
    // used it, attempt 2 would be declined.
    let sha = node
        .node
        .registry
        .active(Slot::PspAdapter)
        .unwrap()
        .loaded
        .sha256
        .clone();
    activate(
        &node,
        &sha,
        json!({ "scenario": "scripted", "script": "declined", "status-script": "declined" }),
    )
    .await;
    let view = node.wait_final(&payment).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    assert_eq!(attempts_of(&node, order).await, 2);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_order_is_not_charged_or_repinned_by_a_queued_retry() {
    let node =
        TestNode::start(scripted_config("transient,succeeded", "succeeded", 1_500).await).await;
    let (_, order) = pay_one(&node, "seller-parked", 1_000).await;
    wait_retry_scheduled(&node, order).await;
    let pinned = int(
        &node,
        "SELECT adapter_activation_id FROM payment_orders WHERE payment_order_id = $1",
        order,
    )
    .await;
    let pinned_sha = text(
        &node,
        "SELECT adapter_sha256 FROM payment_orders WHERE payment_order_id = $1",
        order,
    )
    .await;
    // Parked the way v1 parked (leaving the due retry), with another
    // adapter active: the queued retry still arrives at the executor.
    sqlx::query("UPDATE payment_orders SET status = 'PARKED' WHERE payment_order_id = $1")
        .bind(order)
        .execute(&node.pool)
        .await
        .unwrap();
    let template = std::fs::read(component_path("template-psp-adapter")).unwrap();
    let row = node
        .node
        .registry
        .push(
            Slot::PspAdapter,
            &template,
            &fixtures_of("plugins/template-psp-adapter/fixtures"),
            "test",
        )
        .await
        .unwrap();
    activate(&node, &row.sha256, json!({})).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status_of(&node, order).await, "PARKED");
    assert_eq!(
        attempts_of(&node, order).await,
        1,
        "a parked order was charged"
    );
    let sha_now = text(
        &node,
        "SELECT adapter_sha256 FROM payment_orders WHERE payment_order_id = $1",
        order,
    )
    .await;
    assert_eq!(
        sha_now, pinned_sha,
        "a redelivered request re-pinned the order"
    );
    let activation_now = int(
        &node,
        "SELECT adapter_activation_id FROM payment_orders WHERE payment_order_id = $1",
        order,
    )
    .await;
    assert_eq!(activation_now, pinned);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_dead_letter_never_parks_its_order() {
    let mut config = test_config().await;
    // Every executor transaction aborts: a dead letter never commits.
    config.failpoints.psp_executor_abort_before_commit = 1_000_000;
    config.components.psp_adapter.fuel = 20_000_000;
    config.components.psp_adapter.wall_ms = 3_000;
    config.components.psp_adapter.http_timeout_ms = 2_000;
    let node = TestNode::start(config).await;
    let hostile = std::fs::read(component_path("hostile-loop")).unwrap();
    let row = node
        .node
        .registry
        .install(Slot::PspAdapter, &hostile, "test")
        .await
        .unwrap();
    activate(&node, &row.sha256, json!({})).await;
    let (_, order) = pay_one(&node, "seller-abort", 1_000).await;
    // The adapter burns its budget at the first call; every batch holding
    // the dead letter is aborted and redelivered.
    wait_until("the attempt claimed", Duration::from_secs(30), || async {
        attempts_of(&node, order).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_ne!(
        status_of(&node, order).await,
        "PARKED",
        "parked although its dead letter was aborted"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trap_after_the_request_left_is_unknown_not_parked() {
    let psp = axum::Router::new().route("/charge", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, psp).await.unwrap() });
    let mut config = test_config().await;
    config.components.psp_adapter.allow_hosts = vec![format!("http://{addr}")];
    let node = TestNode::start(config).await;
    let hostile = std::fs::read(component_path("hostile-request-then-trap")).unwrap();
    let row = node
        .node
        .registry
        .install(Slot::PspAdapter, &hostile, "test")
        .await
        .unwrap();
    activate(
        &node,
        &row.sha256,
        json!({ "target-url": format!("http://{addr}/charge") }),
    )
    .await;
    let (payment, order) = pay_one(&node, "seller-trap", 1_000).await;
    let view = node.wait_final(&payment).await;
    assert_eq!(
        view["paymentOrders"][0]["status"], "REQUIRES_REVIEW",
        "{view:#}"
    );
    let outcome = text(
        &node,
        "SELECT outcome FROM psp_attempts WHERE payment_order_id = $1",
        order,
    )
    .await;
    assert_eq!(outcome.as_deref(), Some("unknown"));
    node.stop().await;
}

/// The retry delay of the claim tests: long enough that the other node's
/// claim is in place before attempt 2 is due, even on a loaded machine.
const RETRY_MS: u64 = 4_000;

/// Another node claims attempt 2 and is mid-charge until its lease ends.
async fn claim_elsewhere(node: &TestNode, order: Uuid, lease_secs: i32) {
    sqlx::query(
        "INSERT INTO psp_attempts (payment_order_id, attempt, idempotency_key, component_sha256, trace_id, node_id, lease_until)
         SELECT payment_order_id, 2, psp_idempotency_key, adapter_sha256, 'other', 'node-b#1', now() + make_interval(secs => $2)
         FROM payment_orders WHERE payment_order_id = $1",
    )
    .bind(order)
    .bind(lease_secs as f64)
    .execute(&node.pool)
    .await
    .unwrap();
}

/// The other node's charge of attempt 2 ends: it records its outcome.
async fn finish_first_holder(node: &TestNode, order: Uuid) {
    sqlx::query(
        "UPDATE psp_attempts SET outcome = 'succeeded', psp_reference = 'ref-first-holder', latency_ms = 1, finished_at = now()
         WHERE payment_order_id = $1 AND attempt = 2 AND outcome IS NULL",
    )
    .bind(order)
    .execute(&node.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_claim_holder_waits_for_the_lease_and_keeps_the_first_outcome() {
    // Attempt 2's `status` would say "declined": had the second holder
    // asked it at once, it would have recorded that over the first holder's
    // charge, which is still running.
    let node =
        TestNode::start(scripted_config("transient,succeeded", "declined", RETRY_MS).await).await;
    let (payment, order) = pay_one(&node, "seller-lease", 1_000).await;
    wait_retry_scheduled(&node, order).await;
    claim_elsewhere(&node, order, 8).await;
    // The retry (due within RETRY_MS) finds the claim and waits.
    tokio::time::sleep(Duration::from_millis(RETRY_MS + 1_000)).await;
    assert_eq!(status_of(&node, order).await, "PENDING");
    finish_first_holder(&node, order).await;
    let view = node.wait_final(&payment).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    assert_eq!(view["paymentOrders"][0]["pspReference"], "ref-first-holder");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_claim_holder_takes_the_first_outcome_as_soon_as_it_lands() {
    // After a rebalance the first holder usually finishes in milliseconds;
    // the second must not sleep out a lease of minutes (holding its whole
    // batch) before it sees that outcome.
    let node =
        TestNode::start(scripted_config("transient,succeeded", "declined", RETRY_MS).await).await;
    let (payment, order) = pay_one(&node, "seller-lease-poll", 1_000).await;
    wait_retry_scheduled(&node, order).await;
    claim_elsewhere(&node, order, 300).await;
    tokio::time::sleep(Duration::from_millis(RETRY_MS + 1_000)).await;
    assert_eq!(status_of(&node, order).await, "PENDING");
    finish_first_holder(&node, order).await;
    let view = tokio::time::timeout(Duration::from_secs(20), node.wait_final(&payment))
        .await
        .expect("the second holder kept waiting for a lease after the outcome landed");
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    assert_eq!(view["paymentOrders"][0]["pspReference"], "ref-first-holder");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finalize_that_applied_nothing_produces_no_event() {
    let node = TestNode::start(test_config().await).await;
    // Makes the applier's guarded update apply nothing for one seller, as a
    // concurrent change between its read and its write would.
    sqlx::raw_sql(
        "CREATE FUNCTION skip_final() RETURNS trigger AS $$ BEGIN RETURN NULL; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER skip_final BEFORE UPDATE ON payment_orders FOR EACH ROW
           WHEN (NEW.seller_id = 'seller-skip' AND NEW.status = 'SUCCEEDED') EXECUTE FUNCTION skip_final();",
    )
    .execute(&node.pool)
    .await
    .unwrap();
    let (_, skipped) = pay_one(&node, "seller-skip", 1_000).await;
    let (other_payment, _) = pay_one(&node, "seller-other", 1_000).await;
    let view = node.wait_final(&other_payment).await;
    assert_eq!(view["status"], "SUCCEEDED");
    wait_until(
        "the skipped order's result applied",
        Duration::from_secs(20),
        || async {
            attempts_of(&node, skipped).await == 1
                && text(
                    &node,
                    "SELECT outcome FROM psp_attempts WHERE payment_order_id = $1",
                    skipped,
                )
                .await
                .is_some()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let finalized = read_topic(&brokers(), &node.topic("payment_order_finalized_topic"));
    assert!(
        finalized
            .iter()
            .all(|r| r.key.as_deref() != Some(&skipped.to_string())),
        "a finalized event for an order that was never finalized"
    );
    let journals = int(
        &node,
        "SELECT count(*) FROM journal_entries WHERE payment_order_id = $1",
        skipped,
    )
    .await;
    assert_eq!(journals, Some(0));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_next_attempt_is_charged() {
    let node =
        TestNode::start(scripted_config("transient,succeeded", "succeeded", 5_000).await).await;
    let (payment, order) = pay_one(&node, "seller-next", 1_000).await;
    wait_retry_scheduled(&node, order).await;
    let view = node.get_payment(&payment).await;
    // A call request for attempt 3 while attempt 2 is still due.
    let request = PspCallRequested {
        order: OrderRef {
            payment_order_id: order,
            payment_id: payment.parse().unwrap(),
            seller_id: "seller-next".into(),
            amount: Money::new(1_000, "EUR"),
        },
        attempt: 3,
    };
    let key = order.to_string();
    let event = Envelope::new(
        event_type::PSP_CALL_REQUESTED,
        &key,
        3,
        view["traceId"].as_str().unwrap(),
        None,
        &request,
    );
    produce_event(
        &brokers(),
        &node.topic("payment_order_psp_call_requested_topic"),
        &key,
        &serde_json::to_value(&event).unwrap(),
    )
    .await;
    let view = node.wait_final(&payment).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = int(
        &node,
        "SELECT count(*) FROM psp_attempts WHERE payment_order_id = $1 AND attempt = 3",
        order,
    )
    .await;
    assert_eq!(third, Some(0), "attempt 3 was charged out of turn");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_balance_overflow_is_dead_lettered_and_other_balances_move() {
    let node = TestNode::start(test_config().await).await;
    // One seller's account is a hair below the bigint ceiling: its next
    // credit cannot be stored, whatever the retry.
    sqlx::query(
        "INSERT INTO account_balances (account_code, currency, debit_minor, credit_minor, version)
         VALUES ('MERCHANT_ACCOUNT.seller-full.EUR', 'EUR', 0, 9223372036854775000, 1)",
    )
    .execute(&node.pool)
    .await
    .unwrap();
    let (full, _) = pay_one(&node, "seller-full", 1_000).await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(pay_one(&node, &format!("seller-ok-{i}"), 1_000 + i).await);
    }
    node.wait_final(&full).await;
    for (payment, _) in &others {
        node.wait_final(payment).await;
    }
    wait_until("every other seller's balance moved", Duration::from_secs(30), || async {
        let moved: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM account_balances WHERE account_code LIKE 'MERCHANT_ACCOUNT.seller-ok-%' AND credit_minor > 0",
        )
        .fetch_one(&node.pool)
        .await
        .unwrap();
        moved == 5
    })
    .await;
    let dlq = read_topic_until(
        &brokers(),
        &format!("{}.DLQ", node.topic("ledger_entries_recorded_topic")),
        |records| !records.is_empty(),
    );
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert_eq!(dlq[0].header("dlq.errorClass"), Some("database_data"));
    assert!(
        dlq[0].header("eventId").is_some(),
        "DLQ record names its event"
    );
    let full_credit: i64 = sqlx::query_scalar(
        "SELECT credit_minor FROM account_balances WHERE account_code = 'MERCHANT_ACCOUNT.seller-full.EUR'",
    )
    .fetch_one(&node.pool)
    .await
    .unwrap();
    assert_eq!(full_credit, 9_223_372_036_854_775_000);
    node.stop().await;
}

/// A Stripe-shaped fake PSP whose charge always outlives the host's HTTP
/// timeout (so the outcome is unknown) and whose search only finds the
/// charge from its `known_after`-th query on.
#[derive(Default)]
struct SlowPsp {
    searches: u32,
    charges: u32,
}

type SharedPsp = std::sync::Arc<std::sync::Mutex<SlowPsp>>;

async fn slow_psp(known_after: u32) -> (std::net::SocketAddr, SharedPsp) {
    use axum::extract::State;
    let psp = SharedPsp::default();
    let app = axum::Router::new()
        .route(
            "/v1/payment_intents",
            axum::routing::post(|State(psp): State<SharedPsp>| async move {
                psp.lock().unwrap().charges += 1;
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                axum::Json(
                    json!({ "id": "pi_slow", "object": "payment_intent", "status": "succeeded" }),
                )
            }),
        )
        .route(
            "/v1/payment_intents/search",
            axum::routing::get(move |State(psp): State<SharedPsp>| async move {
                let mut psp = psp.lock().unwrap();
                psp.searches += 1;
                if psp.searches < known_after {
                    return "not json yet".to_string();
                }
                json!({ "object": "search_result", "data": [
                    { "id": "pi_slow", "object": "payment_intent", "status": "succeeded" }
                ] })
                .to_string()
            }),
        )
        .with_state(psp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, psp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_review_janitor_settles_an_unknown_outcome_by_status() {
    // The executor's three status checks see nothing; the janitor's first
    // re-check (query 4) finds the charge.
    let (addr, psp) = slow_psp(4).await;
    let mut config = test_config().await;
    let adapter = &mut config.components.psp_adapter;
    adapter.default_component = "psp-stripe".into();
    adapter.allow_hosts = vec![format!("http://{addr}")];
    adapter.http_timeout_ms = 1_000;
    adapter.wall_ms = 3_000;
    adapter.config = [("base-url".to_string(), format!("http://{addr}"))].into();
    config
        .secrets
        .insert("psp_api_key".into(), "sk_test_fake".into());
    config.psp.review_schedule_secs = vec![1, 1, 1];
    config.psp.review_poll_ms = 200;
    config.psp.claim_lease_ms = 15_000;
    let node = TestNode::start(config).await;
    let (payment, order) = pay_one(&node, "seller-janitor", 1_000).await;
    wait_until("the order in review", Duration::from_secs(30), || async {
        status_of(&node, order).await == "REQUIRES_REVIEW"
    })
    .await;
    let view = node
        .wait_for(&payment, Duration::from_secs(30), |o| {
            o["status"] == "SUCCEEDED"
        })
        .await;
    assert_eq!(
        view["paymentOrders"][0]["pspReference"], "pi_slow",
        "{view:#}"
    );
    wait_until(
        "the janitor's settlement reaches the ledger",
        Duration::from_secs(30),
        || async {
            int(
                &node,
                "SELECT count(*) FROM journal_entries WHERE payment_order_id = $1",
                order,
            )
            .await
                == Some(2)
        },
    )
    .await;
    assert_eq!(psp.lock().unwrap().charges, 1, "charged more than once");
    let metrics = node.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("review_janitor_checks_total") && l.contains("succeeded")),
        "{metrics}"
    );
    node.stop().await;
}
