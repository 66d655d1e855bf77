//! The egress policy travels with the activation: a new adapter whose
//! policy names a host the node config never mentioned reaches it without a
//! restart (and a second node's registry, refreshed from the same database,
//! enforces the same policy); an activation whose adapter tries a host outside
//! its policy is refused and counted; a secret bound to host A is never
//! sent to host B. The PSPs are local HTTP servers this test starts.

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
            let mut seen = record.lock().unwrap();
            seen.push(auth);
            axum::Json(json!({ "id": format!("pi_{}", seen.len()), "status": "succeeded" }))
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
    let stripe = std::fs::read(component_path("psp-stripe")).unwrap();
    let sha = a
        .node
        .registry
        .push(
            Slot::PspAdapter,
            &stripe,
            &fixtures_of("psp-adapters/stripe/fixtures"),
            "author",
        )
        .await
        .unwrap()
        .sha256;

    // 1. A policy naming A: calls go there, with the secret, on both nodes.
    let bound_to_a = json!({ "allow": [url_a],
        "secrets": [{ "name": "psp_api_key", "entry": url_a, "headers": ["Authorization"] }] });
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
