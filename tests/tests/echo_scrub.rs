//! Echo scrubbing end to end: a PSP that quotes the API key it received in
//! its decline (body and a header) never gets the key into the guest's
//! outcome, the `psp_attempts` rows or `GET /api/v1/payments/{id}`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use paynode_tests::*;

const SECRET: &str = "sk_test_echoed_9f3b2c7d";

/// Declines every charge, quoting the Authorization header it received.
async fn echoing_psp() -> SocketAddr {
    let app = axum::Router::new().route(
        "/v1/payment_intents",
        axum::routing::post(|headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            let body = serde_json::json!({ "error": {
                "type": "card_error", "code": "card_declined",
                "message": format!("declined, you sent {auth} {}", "x".repeat(3_000)) } });
            (
                StatusCode::PAYMENT_REQUIRED,
                [("x-echo", auth)],
                axum::Json(body),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_echoed_by_the_psp_is_never_stored_or_shown() {
    let addr = echoing_psp().await;
    let mut config = test_config().await;
    let adapter = &mut config.components.psp_adapter;
    adapter.default_component = "psp-stripe".into();
    adapter.allow_hosts = vec![format!("http://{addr}")];
    adapter.config = [("base-url".to_string(), format!("http://{addr}"))].into();
    config.secrets.insert("psp_api_key".into(), SECRET.into());
    let node = TestNode::start(config).await;
    let body = payment_body("order-echo", &[("seller-echo", 1_000)]);
    let (status, accepted) = node.post_payment("key-echo", &body).await;
    assert_eq!(status, 202, "{accepted}");
    let payment = accepted["paymentId"].as_str().unwrap().to_string();
    let view = node
        .wait_for(&payment, Duration::from_secs(60), |o| {
            o["status"] == "FAILED"
        })
        .await;
    let shown = view.to_string();
    assert!(
        !shown.contains(SECRET),
        "GET /payments shows the key: {view:#}"
    );
    assert!(shown.contains("[redacted]"), "{view:#}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT row_to_json(a)::text FROM psp_attempts a")
        .fetch_all(&node.pool)
        .await
        .unwrap();
    assert!(!stored.is_empty());
    for row in &stored {
        assert!(!row.contains(SECRET), "psp_attempts holds the key: {row}");
        assert!(row.len() < 2_000, "message not capped: {} bytes", row.len());
    }
    node.stop().await;
}
