//! Poison → DLQ with its reason, order PARKED, stage keeps going, `dlq
//! replay` completes it; and a real record re-produced on each of the six
//! topics changes nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paynode::components::Slot;
use paynode::store::plugins;
use paynode_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

const TOPICS: [&str; 6] = [
    "payment_order_created_topic",
    "payment_order_psp_call_requested_topic",
    "payment_order_psp_result_updated_topic",
    "payment_order_finalized_topic",
    "ledger_record_request_queue_topic",
    "ledger_entries_recorded_topic",
];

const GROUPS: [(&str, &str); 6] = [
    ("payment_order_enqueuer", "payment_order_created_topic"),
    (
        "payment_order_psp_call_executor",
        "payment_order_psp_call_requested_topic",
    ),
    (
        "payment_order_psp_result_applier",
        "payment_order_psp_result_updated_topic",
    ),
    (
        "ledger_recording_request_dispatcher",
        "payment_order_finalized_topic",
    ),
    (
        "ledger_recording_consumer",
        "ledger_record_request_queue_topic",
    ),
    ("account_balance_consumer", "ledger_entries_recorded_topic"),
];

/// Waits until every stage's group has committed past the last data record
/// of its topic (control records of transactions also take offsets, so the
/// high watermark itself is not the target).
fn wait_caught_up(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let timeout = Duration::from_secs(5);
    for (group, base) in GROUPS {
        let topic = node.topic(base);
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for record in read_topic(&brokers(), &topic) {
            let entry = last.entry(record.partition).or_insert(record.offset);
            *entry = (*entry).max(record.offset);
        }
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set(
                "group.id",
                format!("{}paynode.{group}", node.config.kafka.prefix),
            )
            .create()
            .unwrap();
        loop {
            let mut list = TopicPartitionList::new();
            for partition in last.keys() {
                list.add_partition(&topic, *partition);
            }
            let committed = consumer.committed_offsets(list, timeout).unwrap();
            let behind: Vec<String> = committed
                .elements()
                .iter()
                .filter(|e| e.offset().to_raw().unwrap_or(-1) <= last[&e.partition()])
                .map(|e| {
                    format!(
                        "p{} committed {:?}, last record {}",
                        e.partition(),
                        e.offset(),
                        last[&e.partition()]
                    )
                })
                .collect();
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{group} did not catch up: {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_records_change_nothing() {
    let node = TestNode::start(test_config().await).await;
    let (status, body) = node
        .post_payment(
            "redeliver",
            &payment_body("o-redeliver", &[("seller-r", 2_000)]),
        )
        .await;
    assert_eq!(status, 202);
    let payment = body["paymentId"].as_str().unwrap();
    let order = body["paymentOrders"][0]["paymentOrderId"]
        .as_str()
        .unwrap()
        .to_string();
    node.wait_final(payment).await;
    let balance_sql = "SELECT credit_minor - debit_minor FROM account_balances WHERE account_code = 'MERCHANT_ACCOUNT.seller-r.EUR'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(balance_sql)
        .fetch_optional(&node.pool)
        .await
        .unwrap()
        != Some(2_000)
    {
        assert!(Instant::now() < deadline, "balance never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot = |node: &TestNode| {
        let pool = node.pool.clone();
        async move {
            let q = |sql: &'static str| {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                }
            };
            (
                q("SELECT count(*) FROM journal_entries").await,
                q("SELECT count(*) FROM ledger_recordings").await,
                q("SELECT count(*) FROM psp_attempts").await,
                q("SELECT coalesce(sum(component_calls), 0)::bigint FROM psp_attempts").await,
                q("SELECT coalesce(sum(version), 0)::bigint FROM account_balances").await,
                q("SELECT credit_minor - debit_minor FROM account_balances WHERE account_code = 'MERCHANT_ACCOUNT.seller-r.EUR'").await,
            )
        }
    };
    wait_caught_up(&node);
    let before = snapshot(&node).await;

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut resent = 0;
    for base in TOPICS {
        let topic = node.topic(base);
        let records = read_topic_until(&brokers(), &topic, |records| {
            records
                .iter()
                .any(|r| r.value["data"].to_string().contains(&order))
        });
        let mine: Vec<&Record> = records
            .iter()
            .filter(|r| r.value["data"].to_string().contains(&order))
            .collect();
        assert!(!mine.is_empty(), "no record of the order on {base}");
        let record = mine[0];
        let payload = serde_json::to_vec(&record.value).unwrap();
        let key = record.key.clone().unwrap_or_default();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        resent += 1;
    }
    assert_eq!(resent, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_caught_up(&node);
    assert_eq!(
        snapshot(&node).await,
        before,
        "a redelivered record changed the database"
    );
    for base in TOPICS {
        assert!(
            read_topic(&brokers(), &format!("{}.DLQ", node.topic(base))).is_empty(),
            "{base} DLQ not empty"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_its_dlq_parks_the_order_and_replay_completes_it() {
    let mut config = test_config().await;
    config.components.psp_adapter.fuel = 20_000_000;
    config.components.psp_adapter.wall_ms = 3_000;
    config.components.psp_adapter.http_timeout_ms = 2_000;
    let node = TestNode::start(config).await;
    let registry = node.node.registry.clone();
    let hostile = std::fs::read(component_path("hostile-loop")).unwrap();
    let row = registry
        .install(Slot::PspAdapter, &hostile, "test")
        .await
        .unwrap();
    plugins::activate(
        &node.pool,
        "psp-adapter",
        &row.sha256,
        &serde_json::json!({}),
        None,
        "activate",
        "test",
    )
    .await
    .unwrap();
    let wait_active = |sha: String| {
        let registry = registry.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while registry.snapshot()["psp-adapter"].0 != sha {
                assert!(Instant::now() < deadline, "activation never arrived");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_active(row.sha256.clone()).await;

    let (_, body) = node
        .post_payment("poison", &payment_body("o-poison", &[("seller-p", 3_000)]))
        .await;
    let parked_payment = body["paymentId"].as_str().unwrap().to_string();
    let parked_order = body["paymentOrders"][0]["paymentOrderId"]
        .as_str()
        .unwrap()
        .to_string();
    let view = node
        .wait_for(&parked_payment, Duration::from_secs(30), |o| {
            o["status"] == "PARKED"
        })
        .await;
    assert!(
        view["paymentOrders"][0]["failureReason"]
            .as_str()
            .unwrap()
            .contains("time budget"),
        "{view:#}"
    );

    let dlq = read_topic_until(
        &brokers(),
        &format!(
            "{}.DLQ",
            node.topic("payment_order_psp_call_requested_topic")
        ),
        |records| !records.is_empty(),
    );
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert_eq!(dlq[0].key.as_deref(), Some(parked_order.as_str()));
    assert_eq!(dlq[0].header("dlq.errorClass"), Some("timeout"));
    assert_eq!(
        dlq[0].header("dlq.stage"),
        Some("payment_order_psp_call_executor")
    );

    // Roll back to the simulator; the stage keeps going for new payments.
    let previous = plugins::previous(&node.pool, "psp-adapter")
        .await
        .unwrap()
        .unwrap();
    plugins::activate(
        &node.pool,
        "psp-adapter",
        &previous.sha256,
        &previous.config,
        None,
        "rollback",
        "test",
    )
    .await
    .unwrap();
    wait_active(previous.sha256.clone()).await;
    let (_, body) = node
        .post_payment("after", &payment_body("o-after", &[("seller-p", 1_000)]))
        .await;
    let view = node.wait_final(body["paymentId"].as_str().unwrap()).await;
    assert_eq!(view["status"], "SUCCEEDED");

    let replayed = paynode::cli::dlq::replay(
        &node.config,
        "payment_order_psp_call_requested_topic",
        None,
        None,
        "test",
    )
    .await
    .unwrap();
    assert_eq!(replayed, 1);
    let view = node.wait_final(&parked_payment).await;
    assert_eq!(view["paymentOrders"][0]["status"], "SUCCEEDED", "{view:#}");
    // The claim made before the hostile call is the only attempt: the replay
    // asked `status`, it did not charge again.
    let attempts = node
        .scalar(&format!(
            "SELECT count(*) FROM psp_attempts WHERE payment_order_id = '{parked_order}'"
        ))
        .await;
    assert_eq!(attempts, 1);
    assert_eq!(
        view["paymentOrders"][0]["attempts"][0]["settledByStatus"],
        true
    );
    node.stop().await;
}
