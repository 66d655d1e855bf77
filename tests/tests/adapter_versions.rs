//! The versioned psp-adapter contract: the host loads 1.0.0 components
//! (the frozen `psp-simulator-v1` reference, built from a copy of the
//! simulator as it was before 2.0.0) and 2.0.0 ones side by side, tells
//! them apart by their exports, charges with both, and refuses a v1
//! refund or notification clearly; the 2.0.0 HMAC import signs with a host
//! secret the guest never sees.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use paynode::components::bindings::adapter::paynode::psp_adapter::types as adapter;
use paynode::components::egress_policy::{Egress, EgressPolicy};
use paynode::components::host_imports::HttpPolicy;
use paynode::components::runtime::{CallEnv, Incoming, Limits, RefundRequest, Rejection};
use paynode::components::{Loaded, PluginError, Runtime, Slot};
use paynode::config::SlotConfig;
use paynode_tests::component_path;
use sha2::Sha256;

const WEBHOOK_SECRET: &str = "whsec_test_only";

/// Host secrets, each also approved as an HMAC key.
fn env(secrets: &[(&str, &str)]) -> CallEnv {
    let signing: Vec<&str> = secrets.iter().map(|(name, _)| *name).collect();
    env_signing(secrets, &signing)
}

fn env_signing(secrets: &[(&str, &str)], signing: &[&str]) -> CallEnv {
    let policy = EgressPolicy {
        signing: signing.iter().map(|name| name.to_string()).collect(),
        ..EgressPolicy::default()
    };
    let secrets: BTreeMap<String, secrecy::SecretString> = secrets
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string().into()))
        .collect();
    CallEnv {
        limits: Limits::from_slot(&SlotConfig::default()),
        http: Some(HttpPolicy {
            client: reqwest::Client::new(),
            // An approved policy that allows no host: these cases send no
            // request, and the HMAC import needs only the secrets.
            egress: Arc::new(Egress::approved(&policy, &[]).unwrap()),
            timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
            secrets: Arc::new(secrets),
            fake_secrets: false,
            refused: Arc::new(AtomicU64::new(0)),
        }),
        script: None,
        trace_id: "test".into(),
    }
}

async fn load(runtime: &Runtime, name: &str) -> Loaded {
    let bytes = std::fs::read(component_path(name)).expect("component built");
    runtime.load(Slot::PspAdapter, &bytes).await.unwrap()
}

fn config() -> Vec<(String, String)> {
    vec![
        ("scenario".into(), "scripted".into()),
        ("refund-script".into(), "succeeded".into()),
        ("latency".into(), "off".into()),
    ]
}

fn charge() -> adapter::ChargeRequest {
    adapter::ChargeRequest {
        payment_order_id: "po-1".into(),
        payment_id: "p-1".into(),
        seller_id: "seller-1".into(),
        amount: adapter::Money {
            quantity: 1_000,
            currency: "EUR".into(),
        },
        attempt: 1,
        idempotency_key: "key-1".into(),
    }
}

fn refund() -> RefundRequest {
    RefundRequest {
        refund_id: "rf-1".into(),
        payment_order_id: "po-1".into(),
        payment_id: "p-1".into(),
        seller_id: "seller-1".into(),
        charge_reference: "sim_1".into(),
        charge_idempotency_key: "key-1".into(),
        captured: adapter::Money {
            quantity: 1_000,
            currency: "EUR".into(),
        },
        amount: adapter::Money {
            quantity: 400,
            currency: "EUR".into(),
        },
        reason: "test".into(),
        attempt: 1,
        idempotency_key: "rkey-1".into(),
    }
}

fn signed(body: &str, secret: &str) -> Incoming {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    Incoming {
        headers: vec![(
            "X-Sim-Signature".into(),
            hex::encode(mac.finalize().into_bytes()),
        )],
        body: body.as_bytes().to_vec(),
        received_at: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_component_still_loads_and_charges_and_its_refund_is_refused_clearly() {
    let runtime = Runtime::new(None).unwrap();
    let v1 = load(&runtime, "psp-simulator-v1").await;
    assert_eq!(v1.contract_major(), 1);
    assert!(!v1.supports_refunds());
    let (outcome, _) = runtime
        .charge(&v1, &env(&[]), &config(), &charge())
        .await
        .unwrap();
    assert!(
        matches!(outcome, adapter::Outcome::Succeeded(_)),
        "{outcome:?}"
    );
    let (status, _) = runtime
        .status(&v1, &env(&[]), &config(), &charge())
        .await
        .unwrap();
    assert!(
        matches!(status, adapter::Outcome::Succeeded(_)),
        "{status:?}"
    );

    let refused = runtime
        .refund(&v1, &env(&[]), &config(), &refund(), false)
        .await;
    match refused {
        Err(PluginError::Unsupported(message)) => assert!(
            message.contains("adapter version does not support refunds"),
            "{message}"
        ),
        other => panic!("a v1 refund must be Unsupported, got {other:?}"),
    }
    let refused = runtime
        .parse_notification(&v1, &env(&[]), &config(), &signed("id=e", "x"))
        .await;
    assert!(
        matches!(refused, Err(PluginError::Unsupported(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_component_refunds_and_verifies_notifications_with_a_host_held_secret() {
    let runtime = Runtime::new(None).unwrap();
    let v2 = load(&runtime, "psp-simulator").await;
    assert_eq!(v2.contract_major(), 2);
    let (outcome, _) = runtime
        .charge(&v2, &env(&[]), &config(), &charge())
        .await
        .unwrap();
    assert!(
        matches!(outcome, adapter::Outcome::Succeeded(_)),
        "{outcome:?}"
    );
    let (outcome, _) = runtime
        .refund(&v2, &env(&[]), &config(), &refund(), false)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, adapter::Outcome::Succeeded(r) if r.starts_with("simrf_")),
        "{outcome:?}"
    );

    let secrets = [("sim_webhook_secret", WEBHOOK_SECRET)];
    let body = "id=evt_9&type=refund.succeeded&key=rkey-1&reference=simrf_9";
    let (parsed, _) = runtime
        .parse_notification(
            &v2,
            &env(&secrets),
            &config(),
            &signed(body, WEBHOOK_SECRET),
        )
        .await
        .unwrap();
    let notifications = parsed.expect("a correctly signed notification parses");
    assert_eq!(notifications.len(), 1);
    assert_eq!(notifications[0].event_id, "evt_9");
    assert_eq!(notifications[0].idempotency_key, "rkey-1");

    // Signed with another key, or with no secret configured on the host.
    let (parsed, _) = runtime
        .parse_notification(&v2, &env(&secrets), &config(), &signed(body, "guess"))
        .await
        .unwrap();
    assert!(
        matches!(parsed, Err(Rejection::BadSignature(_))),
        "{parsed:?}"
    );
    let (parsed, _) = runtime
        .parse_notification(&v2, &env(&[]), &config(), &signed(body, WEBHOOK_SECRET))
        .await
        .unwrap();
    assert!(
        matches!(parsed, Err(Rejection::BadSignature(_))),
        "{parsed:?}"
    );

    // The secret is on the host, but the activation's approved policy does
    // not list it for signing: the component cannot use it.
    let unlisted = env_signing(&secrets, &["another_secret"]);
    let (parsed, _) = runtime
        .parse_notification(&v2, &unlisted, &config(), &signed(body, WEBHOOK_SECRET))
        .await
        .unwrap();
    match parsed {
        Err(Rejection::BadSignature(why)) => assert!(
            why.contains("sim_webhook_secret is not in this adapter's signing list"),
            "{why}"
        ),
        other => panic!("an unlisted signing key must be refused, got {other:?}"),
    }
}
