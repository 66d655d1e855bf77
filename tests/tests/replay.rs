//! `paynode replay`: a candidate posting-rules component over the orders
//! the ledger recorded. The active rules replay as "same"; other rules show
//! the exact posting lines they would change; broken or hostile rules are
//! "rejected" with their failure class (what the ledger stage would DLQ
//! them for); the ledger is never touched.

use std::time::Duration;

use paynode::cli::replay::{replay, ReplayReport, Verdict};
use paynode::components::runtime::CallEnv;
use paynode::components::{Runtime, Slot};
use paynode_tests::*;

async fn replay_with(node: &TestNode, component: &str) -> ReplayReport {
    let runtime = Runtime::new(None).unwrap();
    let bytes = std::fs::read(component_path(component)).unwrap();
    let candidate = runtime.load(Slot::PostingRules, &bytes).await.unwrap();
    let env = CallEnv::offline(&node.config.components.posting_rules, "replay-test");
    replay(
        &node.pool,
        &runtime,
        &candidate,
        &env,
        &[],
        1000,
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .unwrap()
}

/// (journal count, Σ posting amounts): what must not move during a replay.
async fn ledger_footprint(node: &TestNode) -> (i64, i64) {
    (
        node.scalar("SELECT count(*) FROM journal_entries").await,
        node.scalar("SELECT coalesce(sum(amount_minor), 0)::bigint FROM postings")
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_diffs_candidate_rules_against_the_ledger() {
    let node = TestNode::start(test_config().await).await;
    let (status, body) = node
        .post_payment(
            "replay-1",
            &payment_body("o-replay-1", &[("s-a", 1000), ("s-b", 2500)]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = node
        .post_payment("replay-2", &payment_body("o-replay-2", &[("s-c", 700)]))
        .await;
    assert_eq!(status, 202);
    let order_a = body["paymentOrders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["sellerId"] == "s-a")
        .unwrap()["paymentOrderId"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while node.scalar("SELECT count(*) FROM ledger_recordings").await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "ledger never recorded 3 orders"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = ledger_footprint(&node).await;
    assert_eq!(before.0, 6, "AUTH + CAPTURE per order");

    // The active rules reproduce the ledger exactly.
    let same = replay_with(&node, "ledger-marketplace").await;
    assert_eq!(
        (same.orders, same.same, same.changed, same.rejected),
        (3, 3, 0, 0),
        "{}",
        same.render()
    );
    assert!(same.diffs.is_empty());

    // Other valid rules: every order changes, with the exact lines.
    let other = replay_with(&node, "template-posting-rules").await;
    assert_eq!(
        (other.orders, other.same, other.changed, other.rejected),
        (3, 0, 3, 0),
        "{}",
        other.render()
    );
    let diff = other
        .diffs
        .iter()
        .find(|d| d.payment_order_id.to_string() == order_a)
        .unwrap();
    assert_eq!(diff.verdict, Verdict::Changed);
    assert_eq!(
        diff.added,
        vec![
            format!("SETTLEMENT:{order_a} MERCHANT_ACCOUNT.s-a.EUR credit 1000 EUR"),
            format!("SETTLEMENT:{order_a} PSP_RECEIVABLES.GLOBAL.EUR debit 1000 EUR"),
        ]
    );
    assert_eq!(diff.removed.len(), 6, "{:?}", diff.removed);
    assert!(diff.removed.contains(&format!(
        "AUTH:{order_a} AUTH_RECEIVABLE.GLOBAL.EUR debit 1000 EUR"
    )));
    assert!(other.render().contains("+ SETTLEMENT:"));

    // Broken rules: rejected with the class the ledger stage would DLQ them for.
    for (component, class) in [
        ("hostile-unbalanced", "invalid_output"),
        ("hostile-foreign-account", "invalid_output"),
        ("hostile-oversized", "timeout"), // its output loop burns the default fuel first
    ] {
        let report = replay_with(&node, component).await;
        assert_eq!(
            (report.orders, report.rejected),
            (3, 3),
            "{component}: {}",
            report.render()
        );
        for diff in &report.diffs {
            assert_eq!(diff.verdict, Verdict::Rejected);
            let error = diff.error.as_deref().unwrap();
            assert!(error.starts_with(class), "{component}: {error}");
        }
    }

    // A component of another slot is not a candidate at all.
    let adapter = std::fs::read(component_path("psp-simulator")).unwrap();
    let refused = Runtime::new(None)
        .unwrap()
        .load(Slot::PostingRules, &adapter)
        .await
        .unwrap_err();
    assert_eq!(refused.class(), "invalid_component", "{refused}");

    assert_eq!(
        ledger_footprint(&node).await,
        before,
        "a replay writes nothing"
    );
    node.stop().await;
}
