//! The registry over the admin HTTP API: uploads are validated (world,
//! imports, fixtures), activation and rollback are audited.

use base64::Engine as _;
use paynode_tests::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_activate_rollback_over_http() {
    let node = TestNode::start(test_config().await).await;
    let admin = node.token(&["ADMIN"]);
    let url = |path: &str| format!("{}/api/v1/admin/{path}", node.base);
    let upload = |name: &str, slot: &str, fixtures: Option<Value>| {
        let wasm = base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(component_path(name)).unwrap());
        let mut body = json!({ "slot": slot, "wasmBase64": wasm });
        if let Some(fixtures) = fixtures {
            body["fixtures"] = fixtures;
        }
        node.http
            .post(url("plugins"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let fixtures: Value = serde_json::from_str(
        &std::fs::read_to_string(
            workspace_root().join("psp-adapters/stripe/fixtures/payment-intents.json"),
        )
        .unwrap(),
    )
    .unwrap();

    // No fixtures: refused before anything is stored.
    let refused = upload("psp-stripe", "psp-adapter", None).await.unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("fixtures"),
        "{problem}"
    );
    assert_eq!(
        node.scalar("SELECT count(*) FROM plugins WHERE uploaded_by = 'test-client'")
            .await,
        0
    );

    let stored = upload("psp-stripe", "psp-adapter", Some(fixtures.clone()))
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 201);
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(stored["sha256"], sha256_file(&component_path("psp-stripe")));

    let mut wrong = fixtures.clone();
    wrong["cases"][0]["expect"] = json!({ "succeeded": "pi_not_this" });
    let refused = upload("psp-stripe", "psp-adapter", Some(wrong))
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("fixtures failed"),
        "{problem}"
    );

    let refused = upload("hostile-extra-import", "psp-adapter", None)
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let refused = upload("ledger-marketplace", "psp-adapter", None)
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);

    // Wrong slot on activation, then a real activation and a rollback.
    let sha = stored["sha256"].as_str().unwrap();
    let wrong_slot = node
        .http
        .post(url("plugins/retry-policy/activate"))
        .bearer_auth(&admin)
        .json(&json!({ "sha256": sha }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_slot.status().as_u16(), 404);
    // The bootstrap version was stored without fixtures: it cannot be
    // activated by hand (a rollback may still return to it).
    let bootstrap_sha = sha256_file(&component_path("psp-simulator"));
    let refused = node
        .http
        .post(url("plugins/psp-adapter/activate"))
        .bearer_auth(&admin)
        .json(&json!({ "sha256": bootstrap_sha }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("fixtures"),
        "{problem}"
    );
    let config = json!({ "sha256": sha, "config": { "base-url": "http://127.0.0.1:9" } });
    let activated = node
        .http
        .post(url("plugins/psp-adapter/activate"))
        .bearer_auth(&admin)
        .json(&config)
        .send()
        .await
        .unwrap();
    assert_eq!(activated.status().as_u16(), 200);
    let list: Value = node
        .http
        .get(url("plugins"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let active = list["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["slot"] == "psp-adapter")
        .unwrap()
        .clone();
    assert_eq!(active["sha256"], sha);
    let rolled = node
        .http
        .post(url("plugins/psp-adapter/rollback"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(rolled.status().as_u16(), 200);
    let rolled: Value = rolled.json().await.unwrap();
    assert_eq!(
        rolled["sha256"],
        sha256_file(&component_path("psp-simulator"))
    );
    let audited = node.scalar("SELECT count(*) FROM admin_audit WHERE actor = 'test-client' AND action IN ('push', 'activate', 'rollback')").await;
    assert_eq!(audited, 3);
    node.stop().await;
}
