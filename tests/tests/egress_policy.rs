//! The egress policy travels with the activation: a new adapter whose
//! policy names a host the node config never mentioned reaches it without a
//! restart (and a second node's registry, refreshed from the same database,
//! enforces the same policy); an activation whose adapter tries a host outside
//! its policy is refused and counted; a secret bound to host A is never
//! sent to host B. Two nodes each charge through a host named only by the
//! activation; an order pinned to an activation keeps its policy after
//! another is activated. The PSPs are local HTTP servers this test starts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use paynode::components::registry::Registry;
use paynode::components::Slot;
use paynode_tests::*;
use serde_json::{json, Value};

const SECRET: &str = "sk_test_bound_to_a_4c1e";

/// A Stripe-shaped PSP charging everything; remembers the Authorization
/// header of every request it got ("" when none).
async fn fake_psp() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    fake_psp_first_failing(false).await
}

/// The same PSP; with `slow_first`, its first request is held for 3 s and
/// answered 500 (a transient failure: the order is retried).
async fn fake_psp_first_failing(slow_first: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/payment_intents",
        axum::routing::post(move |headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let n = {
                let mut seen = record.lock().unwrap();
                seen.push(auth);
                seen.len()
            };
            if slow_first && n == 1 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                return (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({ "error": { "type": "api_error", "message": "held" } })),
                );
            }
            (
                axum::http::StatusCode::OK,
                axum::Json(json!({ "id": format!("pi_{n}"), "status": "succeeded" })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Activates psp-stripe through the admin API with this config and policy.
async fn activate(node: &TestNode, sha: &str, base_url: &str, egress: Value) -> i64 {
    let response = node
        .http
        .post(format!(
            "{}/api/v1/admin/plugins/psp-adapter/activate",
            node.base
        ))
        .bearer_auth(node.token(&["ADMIN"]))
        .json(&json!({ "sha256": sha, "config": { "base-url": base_url }, "egress": egress }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["egress"], egress, "{body:#}");
    body["id"].as_i64().unwrap()
}

async fn wait_active(node: &TestNode, activation: i64) {
    let started = Instant::now();
    while !node
        .node
        .registry
        .active(Slot::PspAdapter)
        .is_ok_and(|a| a.activation_id == activation)
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "node did not switch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a recorded attempt refused by the host with this reason.
async fn wait_for_attempt(node: &TestNode, reason: &str) {
    let sql = format!(
        "SELECT count(*) FROM psp_attempts WHERE code = 'host_refused' AND message LIKE '{}'",
        reason.replace('\'', "''")
    );
    wait_until(reason, Duration::from_secs(30), || async {
        node.scalar(&sql).await > 0
    })
    .await;
}

fn refused_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("component_egress_refused_total{") && l.contains("psp-stripe"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_egress_policy_travels_with_the_activation() {
    let (psp_a, seen_a) = fake_psp().await;
    let (psp_b, seen_b) = fake_psp().await;
    let (url_a, url_b) = (format!("http://{psp_a}"), format!("http://{psp_b}"));
    let mut config = test_config().await;
    // The node config names neither PSP.
    assert!(config.components.psp_adapter.allow_hosts.is_empty());
    config.secrets.insert("psp_api_key".into(), SECRET.into());
    let a = TestNode::start(config.clone()).await;
    // A second node's registry on the same database (no pipeline of its own).
    let b = Registry::new(
        paynode::components::Runtime::new(None).unwrap(),
        a.pool.clone(),
        Arc::new(config),
    );
    let sha = push_stripe(&a).await;

    // 1. A policy naming A: calls go there, with the secret, on both nodes.
    let bound_to_a = bound_to(&url_a);
    let first = activate(&a, &sha, &url_a, bound_to_a.clone()).await;
    wait_active(&a, first).await;
    b.refresh().await.unwrap();
    let on_b = b.active(Slot::PspAdapter).unwrap();
    assert_eq!(on_b.activation_id, first);
    let url = |text: &str| reqwest::Url::parse(text).unwrap();
    assert!(on_b.egress.check_url(&url(&format!("{url_a}/v1"))).is_ok());
    assert!(on_b.egress.check_url(&url(&format!("{url_b}/v1"))).is_err());
    for n in 0..4 {
        let body = payment_body(&format!("order-a-{n}"), &[("seller-1", 1_000 + n)]);
        let (status, accepted) = a.post_payment(&format!("key-a-{n}"), &body).await;
        assert_eq!(status, 202, "{accepted}");
        let view = a.wait_final(accepted["paymentId"].as_str().unwrap()).await;
        assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    }
    assert!(seen_a
        .lock()
        .unwrap()
        .iter()
        .all(|auth| auth == &format!("Bearer {SECRET}")));
    let audited: Value = sqlx::query_scalar(
        "SELECT details FROM admin_audit WHERE action = 'activate' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&a.pool)
    .await
    .unwrap();
    assert_eq!(audited["egress"], bound_to_a);

    // 2. An adapter pointed at B under a policy allowing only A: refused
    //    before sending, counted.
    let before = refused_total(&a.metrics_text().await);
    let second = activate(&a, &sha, &url_b, bound_to_a.clone()).await;
    wait_active(&a, second).await;
    let body = payment_body("order-b-refused", &[("seller-1", 2_000)]);
    let (status, _) = a.post_payment("key-b-refused", &body).await;
    assert_eq!(status, 202);
    wait_until("a refused request", Duration::from_secs(30), || async {
        refused_total(&a.metrics_text().await) > before
    })
    .await;
    wait_for_attempt(&a, "%is not in this adapter's egress policy%").await;

    // 3. B allowed too, but the secret bound to A only: the request to B
    //    carrying it is refused; B never sees the secret (nor the request).
    let both = json!({ "allow": [url_a, url_b],
        "secrets": [{ "name": "psp_api_key", "entry": url_a, "headers": ["Authorization"] }] });
    let third = activate(&a, &sha, &url_b, both).await;
    wait_active(&a, third).await;
    let body = payment_body("order-b-secret", &[("seller-2", 3_000)]);
    let (status, _) = a.post_payment("key-b-secret", &body).await;
    assert_eq!(status, 202);
    wait_for_attempt(
        &a,
        "%secret psp_api_key is not bound to header authorization%",
    )
    .await;
    assert!(
        seen_b
            .lock()
            .unwrap()
            .iter()
            .all(|auth| !auth.contains(SECRET)),
        "B saw the secret"
    );
    assert!(seen_b.lock().unwrap().is_empty(), "B was reached");
    a.stop().await;
}

/// Pushes the Stripe-shaped adapter and returns its sha256.
async fn push_stripe(node: &TestNode) -> String {
    let stripe = std::fs::read(component_path("psp-stripe")).unwrap();
    node.node
        .registry
        .push(
            Slot::PspAdapter,
            &stripe,
            &fixtures_of("psp-adapters/stripe/fixtures"),
            "author",
        )
        .await
        .unwrap()
        .sha256
}

fn bound_to(url: &str) -> Value {
    json!({ "allow": [url],
        "secrets": [{ "name": "psp_api_key", "entry": url, "headers": ["Authorization"] }] })
}

/// Which node's PSP stage called the PSP for each succeeded attempt.
async fn charging_nodes(node: &TestNode) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT split_part(node_id, '#', 1) FROM psp_attempts WHERE outcome = 'succeeded' ORDER BY 1",
    )
    .fetch_all(&node.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_charges_a_new_host_without_a_restart() {
    let (psp_a, seen_a) = fake_psp().await;
    let url_a = format!("http://{psp_a}");
    let mut config = test_config().await;
    assert!(config.components.psp_adapter.allow_hosts.is_empty());
    config.secrets.insert("psp_api_key".into(), SECRET.into());
    let mut config_a = config.clone();
    config_a.stages.instance_id = "node-a".into();
    let mut config_b = config;
    config_b.stages.instance_id = "node-b".into();
    let a = TestNode::start(config_a).await;
    let b = TestNode::start(config_b).await;
    let sha = push_stripe(&a).await;
    let activation = activate(&a, &sha, &url_a, bound_to(&url_a)).await;
    wait_active(&a, activation).await;
    wait_active(&b, activation).await;
    // Both nodes' PSP stages share the orders' partitions: pay until each
    // has charged through A at least once.
    let mut n = 0;
    while charging_nodes(&a).await.len() < 2 {
        assert!(
            n < 60,
            "only {:?} charged after {n} payments",
            charging_nodes(&a).await
        );
        let node = if n % 2 == 0 { &a } else { &b };
        let body = payment_body(&format!("order-every-{n}"), &[("seller-1", 1_000 + n)]);
        let (status, accepted) = node.post_payment(&format!("key-every-{n}"), &body).await;
        assert_eq!(status, 202, "{accepted}");
        let view = node
            .wait_final(accepted["paymentId"].as_str().unwrap())
            .await;
        assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
        n += 1;
    }
    assert_eq!(charging_nodes(&a).await, ["node-a", "node-b"]);
    let seen = seen_a.lock().unwrap().clone();
    assert!(
        seen.iter().all(|auth| auth == &format!("Bearer {SECRET}")),
        "{seen:?}"
    );
    let refused = refused_total(&a.metrics_text().await) + refused_total(&b.metrics_text().await);
    assert_eq!(refused, 0.0);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_order_keeps_its_activations_policy() {
    // A holds its first charge for 3 s and fails it (transient): while it is
    // held, a policy allowing only B is activated. The order's retry must
    // still go to A with the secret, under the policy it was pinned with.
    let (psp_a, seen_a) = fake_psp_first_failing(true).await;
    let (psp_b, seen_b) = fake_psp().await;
    let (url_a, url_b) = (format!("http://{psp_a}"), format!("http://{psp_b}"));
    let mut config = test_config().await;
    config.secrets.insert("psp_api_key".into(), SECRET.into());
    let node = TestNode::start(config).await;
    let sha = push_stripe(&node).await;
    let first = activate(&node, &sha, &url_a, bound_to(&url_a)).await;
    wait_active(&node, first).await;
    let body = payment_body("order-pinned-policy", &[("seller-1", 4_000)]);
    let (status, accepted) = node.post_payment("key-pinned-policy", &body).await;
    assert_eq!(status, 202, "{accepted}");
    wait_until(
        "the first charge reaches A",
        Duration::from_secs(30),
        || async { !seen_a.lock().unwrap().is_empty() },
    )
    .await;
    let second = activate(&node, &sha, &url_b, bound_to(&url_b)).await;
    wait_active(&node, second).await;
    let view = node
        .wait_final(accepted["paymentId"].as_str().unwrap())
        .await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    let seen = seen_a.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "A saw {seen:?}");
    assert!(
        seen.iter().all(|auth| auth == &format!("Bearer {SECRET}")),
        "{seen:?}"
    );
    assert!(seen_b.lock().unwrap().is_empty(), "B was reached");
    let refused = node
        .scalar("SELECT count(*) FROM psp_attempts WHERE code = 'host_refused'")
        .await;
    assert_eq!(refused, 0);
    node.stop().await;
}
