//! Hostile components are refused or contained with the exact failure class,
//! and the runtime keeps serving other calls. Also: the harness passes the
//! reference fixtures and fails a wrong one with a diff; a slow PSP is not
//! stopped by the CPU budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paynode::components::bindings::adapter::paynode::psp_adapter::types as adapter;
use paynode::components::bindings::policy::paynode::retry_policy::types as policy;
use paynode::components::bindings::rules::paynode::posting_rules::types as rules;
use paynode::components::harness::{self, FixtureFile};
use paynode::components::host_imports::HttpPolicy;
use paynode::components::invariants::{check_journals, PostingScope};
use paynode::components::runtime::{CallEnv, Limits};
use paynode::components::{Loaded, PluginError, Runtime, Slot};
use paynode::config::SlotConfig;
use paynode_tests::component_path;

fn env(slot: &SlotConfig, http: Option<HttpPolicy>) -> CallEnv {
    CallEnv {
        limits: Limits::from_slot(slot),
        http,
        script: None,
        trace_id: "test".into(),
    }
}

fn small_limits() -> SlotConfig {
    SlotConfig {
        fuel: 20_000_000,
        memory_bytes: 16 * 1024 * 1024,
        wall_ms: 3_000,
        ..SlotConfig::default()
    }
}

async fn load(runtime: &Runtime, slot: Slot, name: &str) -> Result<Loaded, PluginError> {
    runtime
        .load(
            slot,
            &std::fs::read(component_path(name)).expect("component built"),
        )
        .await
}

fn charge_request() -> adapter::ChargeRequest {
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

fn finalized_order() -> rules::FinalizedOrder {
    rules::FinalizedOrder {
        payment_order_id: "po-1".into(),
        payment_id: "p-1".into(),
        seller_id: "seller-1".into(),
        amount: rules::Money {
            quantity: 1_000,
            currency: "EUR".into(),
        },
        status: rules::OrderStatus::Succeeded,
        psp_reference: "ref".into(),
    }
}

fn best_psp() -> Vec<(String, String)> {
    vec![
        ("scenario".into(), "BEST_PSP_EVER".into()),
        ("latency".into(), "off".into()),
    ]
}

/// The runtime still serves a normal call after a hostile one.
async fn still_serving(runtime: &Runtime, simulator: &Loaded) {
    let (outcome, _) = runtime
        .charge(
            simulator,
            &env(&small_limits(), None),
            &best_psp(),
            &charge_request(),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, adapter::Outcome::Succeeded(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_components_are_contained_with_the_right_error() {
    let runtime = Runtime::new(None).unwrap();
    let simulator = load(&runtime, Slot::PspAdapter, "psp-simulator")
        .await
        .unwrap();
    let limits = small_limits();

    let looping = load(&runtime, Slot::PspAdapter, "hostile-loop")
        .await
        .unwrap();
    let result = runtime
        .charge(&looping, &env(&limits, None), &[], &charge_request())
        .await;
    assert!(matches!(result, Err(PluginError::Timeout(_))), "{result:?}");
    still_serving(&runtime, &simulator).await;

    let bomb = load(&runtime, Slot::PspAdapter, "hostile-memory")
        .await
        .unwrap();
    let result = runtime
        .charge(&bomb, &env(&limits, None), &[], &charge_request())
        .await;
    assert!(
        matches!(result, Err(PluginError::ResourceLimit(_))),
        "{result:?}"
    );
    still_serving(&runtime, &simulator).await;

    let panicking = load(&runtime, Slot::RetryPolicy, "hostile-panic")
        .await
        .unwrap();
    let context = policy::RetryContext {
        payment_order_id: "po-1".into(),
        attempt: 1,
        failure_code: "x".into(),
        elapsed_ms: 0,
        random: 7,
    };
    let result = runtime
        .decide(&panicking, &env(&limits, None), &[], &context)
        .await;
    assert!(matches!(result, Err(PluginError::Trap(_))), "{result:?}");
    still_serving(&runtime, &simulator).await;

    let scope = PostingScope {
        seller_id: "seller-1",
        currency: "EUR",
    };
    for name in ["hostile-unbalanced", "hostile-foreign-account"] {
        let rule = load(&runtime, Slot::PostingRules, name).await.unwrap();
        let (entries, _) = runtime
            .post(&rule, &env(&limits, None), &[], &finalized_order())
            .await
            .unwrap();
        let entries = entries.expect("the hostile rule returns entries");
        let verdict = check_journals(&entries, &scope);
        assert!(
            matches!(verdict, Err(PluginError::InvalidOutput(_))),
            "{name}: {verdict:?}"
        );
    }

    let oversized = load(&runtime, Slot::PostingRules, "hostile-oversized")
        .await
        .unwrap();
    let big = SlotConfig {
        memory_bytes: 64 * 1024 * 1024,
        fuel: 2_000_000_000,
        wall_ms: 20_000,
        ..SlotConfig::default()
    };
    let result = runtime
        .post(&oversized, &env(&big, None), &[], &finalized_order())
        .await;
    assert!(
        matches!(
            result,
            Err(PluginError::InvalidOutput(_)) | Err(PluginError::ResourceLimit(_))
        ),
        "{result:?}"
    );
    still_serving(&runtime, &simulator).await;

    let extra = load(&runtime, Slot::PspAdapter, "hostile-extra-import").await;
    assert!(
        matches!(extra, Err(PluginError::InvalidComponent(ref m)) if m.contains("imports outside")),
        "{extra:?}"
    );

    // A component in the wrong slot is refused too.
    let wrong = load(&runtime, Slot::PostingRules, "psp-simulator").await;
    assert!(
        matches!(wrong, Err(PluginError::InvalidComponent(_))),
        "{wrong:?}"
    );
    still_serving(&runtime, &simulator).await;
}

/// A local fake PSP: counts requests, answers Stripe-shaped JSON after `delay`.
async fn fake_psp(delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    use axum::routing::{get, post};
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let counter2 = hits.clone();
    let app = axum::Router::new()
        .route("/v1/payment_intents", post(move || {
            let hits = counter.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                axum::Json(serde_json::json!({ "id": "pi_slow", "object": "payment_intent", "status": "succeeded" }))
            }
        }))
        .route("/{*rest}", get(move || {
            let hits = counter2.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn http_policy(allow: Vec<String>, refused: Arc<AtomicU64>) -> HttpPolicy {
    HttpPolicy {
        client: paynode::components::egress::egress_client(),
        egress: Arc::new(paynode::components::egress_policy::Egress::node_config(
            &allow,
            &[],
        )),
        timeout: Duration::from_secs(5),
        max_response_bytes: 64 * 1024,
        secrets: Arc::new(
            [("psp_api_key".to_string(), "sk_test_secret".into())]
                .into_iter()
                .collect(),
        ),
        fake_secrets: false,
        refused,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_cannot_reach_a_host_outside_its_allow_list() {
    let runtime = Runtime::new(None).unwrap();
    let (forbidden, hits) = fake_psp(Duration::ZERO).await;
    let refused = Arc::new(AtomicU64::new(0));
    let policy = http_policy(vec!["127.0.0.1:1".into()], refused.clone());
    let sneaky = load(&runtime, Slot::PspAdapter, "hostile-disallowed-host")
        .await
        .unwrap();
    let config = vec![(
        "target-url".to_string(),
        format!("http://{forbidden}/steal"),
    )];
    let result = runtime
        .charge(
            &sneaky,
            &env(&small_limits(), Some(policy)),
            &config,
            &charge_request(),
        )
        .await;
    assert!(
        result.is_ok(),
        "the adapter maps the refusal itself: {result:?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the forbidden host received a request"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_psp_is_not_stopped_by_the_cpu_budget() {
    let runtime = Runtime::new(None).unwrap();
    let (psp, hits) = fake_psp(Duration::from_secs(2)).await;
    let policy = http_policy(vec![format!("http://{psp}")], Arc::new(AtomicU64::new(0)));
    let stripe = load(&runtime, Slot::PspAdapter, "psp-stripe")
        .await
        .unwrap();
    // A CPU budget far below what 2 s of busy guest code would burn.
    let limits = SlotConfig {
        fuel: 5_000_000,
        wall_ms: 10_000,
        ..SlotConfig::default()
    };
    let config = vec![("base-url".to_string(), format!("http://{psp}"))];
    let (outcome, stats) = runtime
        .charge(
            &stripe,
            &env(&limits, Some(policy)),
            &config,
            &charge_request(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&outcome, adapter::Outcome::Succeeded(r) if r == "pi_slow"),
        "{outcome:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(
        stats.host_wait_ms >= 2_000 && stats.fuel_used < 5_000_000,
        "{stats:?}"
    );
}

fn workspace_file(path: &str) -> std::path::PathBuf {
    paynode_tests::workspace_root().join(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_passes_reference_fixtures_and_fails_a_wrong_one_with_a_diff() {
    let config = paynode::config::Config::default();
    for (component, fixtures) in [
        ("psp-simulator", "psp-adapters/simulator/fixtures"),
        ("psp-simulator-v1", "psp-adapters/simulator-v1/fixtures"),
        ("psp-stripe", "psp-adapters/stripe/fixtures"),
        ("retry-equal-jitter", "plugins/retry-equal-jitter/fixtures"),
        ("ledger-marketplace", "ledger-rules/marketplace/fixtures"),
    ] {
        let (passed, report) = paynode::cli::plugin::test_component(
            &config,
            &component_path(component),
            &workspace_file(fixtures),
            false,
            None,
        )
        .await
        .unwrap();
        assert!(passed, "{component}:\n{report}");
    }

    let text = std::fs::read_to_string(workspace_file(
        "ledger-rules/marketplace/fixtures/marketplace.json",
    ))
    .unwrap();
    let mut wrong: FixtureFile = serde_json::from_str(&text).unwrap();
    let case = wrong
        .cases
        .iter_mut()
        .find(|c| {
            c.expect
                .get("ok")
                .is_some_and(|ok| ok.as_array().is_some_and(|a| !a.is_empty()))
        })
        .unwrap();
    case.expect["ok"][0]["postings"][0]["amount"]["quantity"] = serde_json::json!(1);
    let runtime = Runtime::new(None).unwrap();
    let rules = load(&runtime, Slot::PostingRules, "ledger-marketplace")
        .await
        .unwrap();
    let report = harness::run(&runtime, &rules, &wrong, &env(&SlotConfig::default(), None)).await;
    assert!(!report.passed());
    let rendered = report.render();
    assert!(
        rendered.contains("FAIL") && rendered.contains("- ") && rendered.contains("+ "),
        "{rendered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_core_instances_or_bytes_are_refused_before_anything_runs() {
    let runtime = Runtime::new(None).unwrap();
    let result = runtime
        .load(
            Slot::RetryPolicy,
            &paynode_tests::hostile::many_core_instances(64),
        )
        .await;
    assert!(
        matches!(&result, Err(PluginError::InvalidComponent(m)) if m.contains("core module instances")),
        "{result:?}"
    );
    let huge = vec![0u8; 16 * 1024 * 1024 + 1];
    let result = runtime.load(Slot::RetryPolicy, &huge).await;
    assert!(
        matches!(&result, Err(PluginError::InvalidComponent(m)) if m.contains("larger than")),
        "{result:?}"
    );
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "paynode-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    assert!(!dir.exists());
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_component_is_never_cached_on_disk() {
    let dir = fresh_dir("cache-refused");
    let runtime = Runtime::new(Some(dir.clone())).unwrap();
    let wrong = load(&runtime, Slot::PostingRules, "psp-simulator").await;
    assert!(
        matches!(wrong, Err(PluginError::InvalidComponent(_))),
        "{wrong:?}"
    );
    assert_eq!(cache_files(&dir), Vec::<std::path::PathBuf>::new());
    load(&runtime, Slot::PspAdapter, "psp-simulator")
        .await
        .unwrap();
    assert_eq!(cache_files(&dir).len(), 1, "a trusted load is cached");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_others_can_write_is_never_used() {
    use std::os::unix::fs::PermissionsExt;
    // A directory group and others may write: nothing is written or read.
    let shared = fresh_dir("cache-shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let runtime = Runtime::new(Some(shared.clone())).unwrap();
    load(&runtime, Slot::PspAdapter, "psp-simulator")
        .await
        .unwrap();
    assert_eq!(cache_files(&shared), Vec::<std::path::PathBuf>::new());
    std::fs::remove_dir_all(&shared).unwrap();

    // A private directory holding a file others may write: the file is not
    // loaded. Planted here: stripe's compiled code under the simulator's
    // name; loading it would run stripe as the simulator.
    let dir = fresh_dir("cache-planted");
    let runtime = Runtime::new(Some(dir.clone())).unwrap();
    load(&runtime, Slot::PspAdapter, "psp-stripe")
        .await
        .unwrap();
    let stripe_file = cache_files(&dir).pop().expect("stripe cached");
    let stripe_sha = paynode_tests::sha256_file(&component_path("psp-stripe"));
    let simulator_sha = paynode_tests::sha256_file(&component_path("psp-simulator"));
    let file_name = stripe_file.file_name().unwrap().to_str().unwrap();
    let planted = dir.join(file_name.replace(&stripe_sha, &simulator_sha));
    std::fs::copy(&stripe_file, &planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let runtime = Runtime::new(Some(dir.clone())).unwrap();
    let loaded = load(&runtime, Slot::PspAdapter, "psp-simulator")
        .await
        .unwrap();
    assert_eq!(loaded.name, "psp-simulator", "the planted file was loaded");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fake Stripe that declines every charge, quoting the Authorization
/// header it received (in its body and a header) and padding the message.
async fn echoing_psp() -> SocketAddr {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/payment_intents",
        post(|headers: HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            let message = format!("declined for {auth} {}", "x".repeat(2_000));
            let body = serde_json::json!({ "error": {
                "type": "card_error", "code": "card_declined", "message": message } });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_echoed_by_the_psp_never_reaches_the_outcome() {
    let runtime = Runtime::new(None).unwrap();
    let psp = echoing_psp().await;
    let policy = http_policy(vec![format!("http://{psp}")], Arc::new(AtomicU64::new(0)));
    let stripe = load(&runtime, Slot::PspAdapter, "psp-stripe")
        .await
        .unwrap();
    let config = vec![("base-url".to_string(), format!("http://{psp}"))];
    let (outcome, _) = runtime
        .charge(
            &stripe,
            &env(&small_limits(), Some(policy)),
            &config,
            &charge_request(),
        )
        .await
        .unwrap();
    let adapter::Outcome::Declined(failure) = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        !failure.message.contains("sk_test_secret"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("Bearer [redacted]"),
        "{}",
        failure.message
    );
    let cap = 512; // scrub::MAX_GUEST_TEXT_CHARS
    assert!(
        failure.message.chars().count() <= cap + 1,
        "{} chars",
        failure.message.chars().count()
    );
}
