//! Group commit of intake: many requests share one transaction, yet each
//! gets exactly the answer it would get alone, and the rows match.

use std::collections::BTreeMap;

use paynode::config::{Config, StagesConfig};
use paynode_tests::*;
use serde_json::{json, Value};

/// Only the HTTP intake: the rows stay as intake wrote them.
async fn intake_only_config() -> Config {
    let mut config = test_config().await;
    config.stages = StagesConfig {
        http: true,
        outbox_dispatcher: 0,
        payment_order_enqueuer: 0,
        psp_call_executor: 0,
        psp_result_applier: 0,
        retry_scheduler: 0,
        ledger_request_dispatcher: 0,
        ledger_recording_consumer: 0,
        account_balance_consumer: 0,
        ..StagesConfig::default()
    };
    config
}

/// One answer: status, `Idempotent-Replayed`, body.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

async fn post(node: &TestNode, token: &str, key: &str, body: &Value) -> Answer {
    let response = node
        .http
        .post(format!("{}/api/v1/payments", node.base))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("POST /api/v1/payments");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        replayed,
        body,
    }
}

fn two_sellers(order_id: &str) -> Value {
    payment_body(order_id, &[("s-1", 300), ("s-2", 700)])
}

/// The classes of the burst: each request's class says what it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Unique key and orderId: 202.
    Fresh,
    /// A stored key, same body: 202 replayed.
    Replay,
    /// A stored key, another body: 422.
    Reused,
    /// Four requests per new key, same body: one 202, the others a replay
    /// of it or 409 (in flight).
    SharedKey,
    /// Two new keys per new orderId: one 202, one 409.
    SharedOrder,
    /// A new key for an orderId already paid: 409.
    PaidOrder,
    /// Breaks a business rule: 400.
    Invalid,
}

/// 200 requests: (class, group label, key, body).
fn burst() -> Vec<(Class, String, String, Value)> {
    let mut requests = Vec::new();
    for i in 0..80 {
        let order = format!("fresh-{i}");
        requests.push((
            Class::Fresh,
            order.clone(),
            format!("k-{order}"),
            two_sellers(&order),
        ));
    }
    for i in 0..10 {
        let order = format!("stored-{i}");
        requests.push((
            Class::Replay,
            order.clone(),
            format!("k-{order}"),
            two_sellers(&order),
        ));
    }
    for i in 10..20 {
        let order = format!("stored-{i}");
        let other = payment_body(&order, &[("s-1", 301), ("s-2", 700)]);
        requests.push((Class::Reused, order.clone(), format!("k-{order}"), other));
    }
    for i in 0..10 {
        let order = format!("shared-key-{i}");
        for _ in 0..4 {
            requests.push((
                Class::SharedKey,
                order.clone(),
                format!("k-{order}"),
                two_sellers(&order),
            ));
        }
    }
    for i in 0..10 {
        let order = format!("shared-order-{i}");
        for k in 0..2 {
            requests.push((
                Class::SharedOrder,
                order.clone(),
                format!("k-{order}-{k}"),
                two_sellers(&order),
            ));
        }
    }
    for i in 0..10 {
        let order = format!("stored-{i}");
        requests.push((
            Class::PaidOrder,
            order.clone(),
            format!("k2-{order}"),
            two_sellers(&order),
        ));
    }
    for i in 0..30 {
        let order = format!("invalid-{i}");
        let unbalanced = payment_body(&order, &[("s-1", 300), ("s-2", 700)]);
        let mut body = unbalanced;
        body["totalAmount"]["quantity"] = json!(999);
        requests.push((Class::Invalid, order.clone(), format!("k-{order}"), body));
    }
    assert_eq!(requests.len(), 200);
    requests
}

fn check_class(class: Class, label: &str, answers: &[Answer]) {
    let statuses: Vec<(u16, bool)> = answers.iter().map(|a| (a.status, a.replayed)).collect();
    let what = format!("{class:?} {label}: {statuses:?}");
    match class {
        Class::Fresh => assert_eq!(statuses, [(202, false)], "{what}"),
        Class::Replay => assert_eq!(statuses, [(202, true)], "{what}"),
        Class::Reused => assert_eq!(statuses, [(422, false)], "{what}"),
        Class::PaidOrder => {
            assert_eq!(statuses, [(409, false)], "{what}");
            assert_eq!(
                answers[0].body["type"]
                    .as_str()
                    .map(|t| t.ends_with("order-already-paid")),
                Some(true),
                "{what}"
            );
        }
        Class::Invalid => assert_eq!(statuses, [(400, false)], "{what}"),
        Class::SharedOrder => {
            let mut sorted = statuses.clone();
            sorted.sort();
            assert_eq!(sorted, [(202, false), (409, false)], "{what}");
        }
        Class::SharedKey => {
            let first: Vec<&Answer> = answers
                .iter()
                .filter(|a| a.status == 202 && !a.replayed)
                .collect();
            assert_eq!(first.len(), 1, "{what}");
            for answer in answers {
                match (answer.status, answer.replayed) {
                    (202, true) => assert_eq!(
                        answer.body["paymentId"], first[0].body["paymentId"],
                        "{what}"
                    ),
                    (202, false) => {}
                    (409, false) => assert_eq!(
                        answer.body["type"]
                            .as_str()
                            .map(|t| t.ends_with("request-in-flight")),
                        Some(true),
                        "{what}"
                    ),
                    _ => panic!("{what}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_each_get_their_own_answer() {
    let mut config = intake_only_config().await;
    // Every group holds its transaction a while, so the burst piles up into
    // a few large groups that mix every class.
    config.failpoints.intake_hold_ms = 50;
    let node = TestNode::start(config).await;
    let token = node.token(&["payment:write"]);
    for i in 0..20 {
        let order = format!("stored-{i}");
        let answer = post(&node, &token, &format!("k-{order}"), &two_sellers(&order)).await;
        assert_eq!(answer.status, 202, "{:?}", answer.body);
    }

    let requests = burst();
    let answers = futures::future::join_all(
        requests
            .iter()
            .map(|(_, _, key, body)| post(&node, &token, key, body)),
    )
    .await;
    let mut by_label: BTreeMap<(Class, String), Vec<Answer>> = BTreeMap::new();
    for ((class, label, _, _), answer) in requests.iter().zip(answers) {
        assert!(
            answer.status == 202 || answer.body["traceId"].is_string(),
            "problem without traceId: {:?}",
            answer.body
        );
        by_label
            .entry((*class, label.clone()))
            .or_default()
            .push(answer);
    }
    for ((class, label), answers) in &by_label {
        check_class(*class, label, answers);
    }

    // 20 stored + 80 fresh + 10 shared keys + 10 shared orderIds, 2 orders each.
    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 120);
    assert_eq!(
        node.scalar("SELECT count(*) FROM payment_orders").await,
        240
    );
    assert_eq!(node.scalar("SELECT count(*) FROM outbox_event").await, 240);
    assert_eq!(
        node.scalar("SELECT count(*) FROM idempotency_keys").await,
        120
    );
    // Rows of one transaction share its xmin: the burst's 100 payments were
    // written by far fewer transactions than payments.
    let transactions = node
        .scalar(
            "SELECT count(DISTINCT xmin::text) FROM payments WHERE order_id NOT LIKE 'stored-%'",
        )
        .await;
    assert!(
        transactions <= 50,
        "{transactions} transactions for 100 payments"
    );
    // Each outbox row belongs to an order of its payment.
    let orphans = node
        .scalar(
            "SELECT count(*) FROM outbox_event e LEFT JOIN payment_orders o
             ON o.payment_order_id::text = e.message_key WHERE o.payment_order_id IS NULL",
        )
        .await;
    assert_eq!(orphans, 0);
    node.stop().await;
}

/// Advisory locks held in this test's database (other tests share the server).
async fn advisory_locks(node: &TestNode) -> i64 {
    node.scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_past_its_deadline_rolls_back_and_answers_503() {
    let mut config = intake_only_config().await;
    // The group holds its transaction (keys locked) longer than it may live.
    config.failpoints.intake_hold_ms = 1_500;
    config.intake.group_timeout_ms = 300;
    let node = TestNode::start(config).await;
    let token = node.token(&["payment:write"]);
    let bodies: Vec<Value> = (0..3).map(|i| two_sellers(&format!("late-{i}"))).collect();
    let keys: Vec<String> = (0..3).map(|i| format!("k-late-{i}")).collect();
    let answers = futures::future::join_all(
        keys.iter()
            .zip(&bodies)
            .map(|(key, body)| post(&node, &token, key, body)),
    )
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 503, "{:?}", answer.body);
        assert_eq!(answer.body["status"], 503);
        assert!(answer.body["traceId"].is_string(), "{:?}", answer.body);
    }
    // The transaction ended: no key lock left, nothing written, and the key
    // is free again on this node (another 503 from the group, not a 409).
    assert_eq!(advisory_locks(&node).await, 0);
    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 0);
    let again = post(&node, &token, "k-late-0", &bodies[0]).await;
    assert_eq!(again.status, 503, "{:?}", again.body);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_a_group_when_the_node_stops_are_all_answered() {
    let mut config = intake_only_config().await;
    config.failpoints.intake_hold_ms = 400;
    let node = TestNode::start(config).await;
    let token = node.token(&["payment:write"]);
    let pool = node.pool.clone();
    let bodies: Vec<Value> = (0..20).map(|i| two_sellers(&format!("stop-{i}"))).collect();
    let keys: Vec<String> = (0..20).map(|i| format!("k-stop-{i}")).collect();
    let posts = futures::future::join_all(
        keys.iter()
            .zip(&bodies)
            .map(|(key, body)| post(&node, &token, key, body)),
    );
    let stop = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        node.node.shutdown_token().cancel();
    };
    let (answers, ()) = tokio::join!(posts, stop);
    let accepted = answers.iter().filter(|a| a.status == 202).count() as i64;
    for answer in &answers {
        assert!(matches!(answer.status, 202 | 503), "{answer:?}");
    }
    node.stop().await;
    // Every 202 is a committed payment; nothing else was written.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, accepted);
    assert!(accepted > 0, "the group in flight at the stop must commit");
}
