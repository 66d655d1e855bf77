//! What a node outside dev mode refuses to run with: the published dev
//! HS256 secret (or none) and the simulator PSP. Tests run in dev mode
//! otherwise (`test_config`), so each case here turns it off.

use paynode_tests::*;

const OWN_SECRET: &str = "a-secret-of-this-deployment-0123456789";

/// Outside dev mode the published dev secret is never in force: without a
/// secret of its own (or with a published one) the node does not start, and
/// with one, a token forged with the old default secret is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outside_dev_mode_the_dev_secret_is_refused() {
    let mut config = test_config().await;
    config.auth.dev = false;
    for secret in [None, Some(paynode::config::DEV_HS256_SECRET)] {
        config.auth.hs256_secret = secret.map(Into::into);
        let refused = paynode::node::start(config.clone())
            .await
            .err()
            .expect("a node without a secret of its own starts");
        assert!(
            format!("{refused:#}").contains("auth.hs256_secret"),
            "{refused:#}"
        );
    }

    config.auth.hs256_secret = Some(OWN_SECRET.into());
    config.psp.allow_simulator = true;
    let node = TestNode::start(config).await;
    let mut forger = node.config.auth.clone();
    forger.hs256_secret = Some(paynode::config::DEV_HS256_SECRET.into());
    let forged =
        paynode::api::auth::mint(&forger, "attacker", &["payment:write".into()], 600).unwrap();
    let body = payment_body("order-forged", &[("seller-1", 100)]);
    let status = |token: String| {
        let request = node
            .http
            .post(format!("{}/api/v1/payments", node.base))
            .bearer_auth(token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(forged).await, 401);
    assert_eq!(status(node.token(&["payment:write"])).await, 202);
    node.stop().await;
}

/// The simulator approves charges without moving money: outside dev mode
/// the PSP stage does not start on it unless `psp.allow_simulator` is set
/// (the test above starts one that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outside_dev_mode_the_simulator_psp_is_refused() {
    let mut config = test_config().await;
    config.auth.dev = false;
    config.auth.hs256_secret = Some(OWN_SECRET.into());
    assert_eq!(
        config.components.psp_adapter.default_component,
        paynode::node::SIMULATOR_COMPONENT
    );
    let refused = paynode::node::start(config)
        .await
        .err()
        .expect("a production node starts on the simulator");
    assert!(format!("{refused:#}").contains("simulator"), "{refused:#}");
}
