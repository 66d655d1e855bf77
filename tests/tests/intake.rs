//! Intake over real HTTP: the outcome reaches the real broker, stamped with
//! the component that decided it; bad input changes nothing; auth is enforced.

use paynode_tests::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_outcome_reaches_the_broker_with_the_component_sha() {
    let node = TestNode::start(test_config().await).await;
    let (status, body) = node
        .post_payment(
            "key-1",
            &payment_body("order-1", &[("seller-1", 1500), ("seller-2", 500)]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let payment_id = body["paymentId"].as_str().unwrap().to_string();
    let order_ids: Vec<String> = body["paymentOrders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["paymentOrderId"].as_str().unwrap().to_string())
        .collect();

    let view = node.wait_final(&payment_id).await;
    assert_eq!(view["status"], "SUCCEEDED", "{view:#}");

    let expected_sha = sha256_file(&component_path("psp-simulator"));
    let records = read_topic(
        &brokers(),
        &node.topic("payment_order_psp_result_updated_topic"),
    );
    for order_id in &order_ids {
        let mine: Vec<&Record> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(order_id))
            .collect();
        assert!(!mine.is_empty(), "no outcome event for {order_id}");
        for record in mine {
            assert_eq!(
                record.header("componentSha256"),
                Some(expected_sha.as_str())
            );
            assert_eq!(record.value["data"]["componentSha256"], expected_sha);
            assert_eq!(record.value["data"]["outcome"]["kind"], "succeeded");
            assert_eq!(record.header("traceId"), view["traceId"].as_str());
        }
    }
    // The GET shows each order's latest PSP outcome and the attempt's component.
    for order in view["paymentOrders"].as_array().unwrap() {
        assert_eq!(order["latestOutcome"]["kind"], "succeeded");
        assert_eq!(order["attempts"][0]["componentSha256"], expected_sha);
    }
    node.stop().await;
}

async fn counts(node: &TestNode) -> (i64, i64, i64) {
    (
        node.scalar("SELECT count(*) FROM payments").await,
        node.scalar("SELECT count(*) FROM payment_orders").await,
        node.scalar("SELECT count(*) FROM outbox_event").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_a_problem_and_write_nothing() {
    let node = TestNode::start(test_config().await).await;
    let token = node.token(&["payment:write"]);
    let unbalanced = json!({
        "buyerId": "b", "orderId": "o-1",
        "totalAmount": { "quantity": 1000, "currency": "EUR" },
        "paymentOrders": [{ "sellerId": "s-1", "amount": { "quantity": 999, "currency": "EUR" } }],
    });
    let mixed_currency = json!({
        "buyerId": "b", "orderId": "o-2",
        "totalAmount": { "quantity": 1000, "currency": "EUR" },
        "paymentOrders": [{ "sellerId": "s-1", "amount": { "quantity": 1000, "currency": "USD" } }],
    });
    let float_amount = r#"{"buyerId":"b","orderId":"o-3","totalAmount":{"quantity":10.5,"currency":"EUR"},"paymentOrders":[]}"#;
    let cases: Vec<(String, &str)> = vec![
        (unbalanced.to_string(), "application/json"),
        (mixed_currency.to_string(), "application/json"),
        (float_amount.to_string(), "application/json"),
        ("{not json".to_string(), "application/json"),
        (unbalanced.to_string(), "text/plain"),
        // Two payments of 2^62 minor units to one seller: each was accepted,
        // and together they wrap that seller's i64 balance. Over the cap now.
        (
            payment_body("o-big-1", &[("s-1", 1 << 62)]).to_string(),
            "application/json",
        ),
        (
            payment_body("o-big-2", &[("s-1", 1 << 62)]).to_string(),
            "application/json",
        ),
    ];
    for (body, content_type) in cases {
        let response = node
            .http
            .post(format!("{}/api/v1/payments", node.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", format!("k-{}", uuid::Uuid::new_v4()))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let problem: Value = response.json().await.unwrap();
        assert!((400..500).contains(&status), "{status} for {body}");
        assert_eq!(content, "application/problem+json", "for {body}");
        assert_eq!(problem["status"], status, "{problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // An oversized body is refused before parsing, as a problem too. The
    // server answers before reading it all and then closes the connection:
    // `Connection: close` keeps the client from reusing it for the next
    // request (a broken pipe, seen once under load).
    let huge = format!("{{\"buyerId\":\"{}\"}}", "x".repeat(200 * 1024));
    let response = node
        .http
        .post(format!("{}/api/v1/payments", node.base))
        .bearer_auth(&token)
        .header("connection", "close")
        .header("Idempotency-Key", "k-huge")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // Missing Idempotency-Key is a 400 too.
    let response = node
        .http
        .post(format!("{}/api/v1/payments", node.base))
        .bearer_auth(&token)
        .json(&payment_body("o-4", &[("s-1", 100)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(counts(&node).await, (0, 0, 0));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_and_roles_are_enforced() {
    let node = TestNode::start(test_config().await).await;
    let url = format!("{}/api/v1/payments", node.base);
    let body = payment_body("o-auth", &[("s-1", 100)]);
    let post = |token: Option<String>| {
        let mut request = node
            .http
            .post(&url)
            .header("Idempotency-Key", "k-auth")
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(
        post(Some("not-a-jwt".into()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    let mut other = node.config.auth.clone();
    other.hs256_secret = Some("another-secret-of-enough-length".into());
    let forged =
        paynode::api::auth::mint(&other, "test-client", &["payment:write".into()], 600).unwrap();
    assert_eq!(post(Some(forged)).await.unwrap().status().as_u16(), 401);

    let mut wrong_issuer = node.config.auth.clone();
    wrong_issuer.issuer = "someone-else".into();
    let token =
        paynode::api::auth::mint(&wrong_issuer, "test-client", &["payment:write".into()], 600)
            .unwrap();
    assert_eq!(post(Some(token)).await.unwrap().status().as_u16(), 401);

    // Expired beyond the leeway.
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({ "sub": "c", "iss": node.config.auth.issuer, "aud": node.config.auth.audience,
        "exp": now - 600, "iat": now - 1200, "roles": ["payment:write"] });
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(node.config.auth.hs256_key().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(post(Some(expired)).await.unwrap().status().as_u16(), 401);

    let response = post(Some(node.token(&["FINANCE"]))).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // Admin routes refuse payment:write.
    let response = node
        .http
        .get(format!("{}/api/v1/admin/plugins", node.base))
        .bearer_auth(node.token(&["payment:write"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_replays_and_refuses_a_different_body() {
    let node = TestNode::start(test_config().await).await;
    let body = payment_body("o-idem", &[("s-1", 700)]);
    let (first_status, first) = node.post_payment("idem-1", &body).await;
    assert_eq!(first_status, 202);
    let response = node
        .http
        .post(format!("{}/api/v1/payments", node.base))
        .bearer_auth(node.token(&["payment:write"]))
        .header("Idempotency-Key", "idem-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed["paymentId"], first["paymentId"]);

    let (status, problem) = node
        .post_payment("idem-1", &payment_body("o-idem", &[("s-1", 701)]))
        .await;
    assert_eq!(status, 422, "{problem}");
    // Same orderId under another key: refused, never a second payment.
    let (status, _) = node.post_payment("idem-2", &body).await;
    assert_eq!(status, 409);
    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 1);
    assert_eq!(node.scalar("SELECT count(*) FROM outbox_event").await, 1);
    node.stop().await;
}
