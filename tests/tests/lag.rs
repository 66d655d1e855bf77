//! `kafka_consumergroup_lag` tells the truth: while a stage is stopped its
//! group's lag counts every record waiting for it, and once the stage caught
//! up (and the pipeline is at rest) every group's lag is 0 — not one
//! transaction marker per partition, which a group whose offsets end at its
//! last record would show.

use std::time::{Duration, Instant};

use paynode_tests::*;

/// Summed lag of `group` on /metrics, if the probe reported it yet.
fn lag_of(metrics: &str, group: &str) -> Option<f64> {
    let lines: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("kafka_consumergroup_lag{"))
        .filter(|l| l.contains(&format!("group=\"{group}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!lines.is_empty()).then(|| lines.iter().sum())
}

/// Polls /metrics until `check` holds for `group`'s lag.
async fn wait_lag(node: &TestNode, group: &str, what: &str, check: impl Fn(f64) -> bool) -> f64 {
    // The probe refreshes every 5 s.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let lag = lag_of(&node.metrics_text().await, group);
        if let Some(lag) = lag.filter(|l| check(*l)) {
            return lag;
        }
        assert!(
            Instant::now() < deadline,
            "{group}: lag {lag:?}, wanted {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_counts_waiting_records_and_returns_to_zero() {
    const N: usize = 30;
    let mut config = test_config().await;
    // The ledger recorder is stopped on this node.
    config.stages.ledger_recording_consumer = 0;
    let node = TestNode::start(config.clone()).await;
    let names = paynode::kafka::Names::new(&config.kafka.prefix);
    let ledger_group = names.group("ledger_recording_consumer");

    let mut payments = Vec::new();
    for n in 0..N {
        let key = format!("lag-{n}");
        let (status, body) = node
            .post_payment(&key, &payment_body(&key, &[("lag-seller", 100)]))
            .await;
        assert_eq!(status, 202, "{body}");
        payments.push(body["paymentId"].as_str().unwrap().to_string());
    }
    for id in &payments {
        node.wait_final(id).await;
    }
    // Every finalized order waits on the ledger request topic.
    let behind = wait_lag(&node, &ledger_group, "≥ one per waiting record", |l| {
        l >= N as f64
    })
    .await;
    println!("ledger recorder stopped: lag {behind}");

    // The recorder starts on a second node (that stage only) and catches up.
    let mut recorder = config.clone();
    recorder.stages = paynode::config::StagesConfig {
        outbox_dispatcher: 0,
        payment_order_enqueuer: 0,
        psp_call_executor: 0,
        psp_result_applier: 0,
        retry_scheduler: 0,
        ledger_request_dispatcher: 0,
        ledger_recording_consumer: 1,
        account_balance_consumer: 0,
        instance_id: "recorder".into(),
        ..recorder.stages
    };
    let second = TestNode::start(recorder).await;
    wait_until("every order recorded", Duration::from_secs(60), || async {
        node.scalar("SELECT count(*) FROM ledger_recordings").await == N as i64
    })
    .await;
    // At rest, every group of the pipeline has lag 0.
    for stage in [
        "payment_order_enqueuer",
        "payment_order_psp_call_executor",
        "payment_order_psp_result_applier",
        "ledger_recording_request_dispatcher",
        "ledger_recording_consumer",
        "account_balance_consumer",
    ] {
        wait_lag(&second, &names.group(stage), "0 at rest", |l| l == 0.0).await;
    }
    second.stop().await;
    node.stop().await;
}
