//! The HTTP metrics take their labels from a closed set (route templates,
//! a fixed list of methods), never from what a client sends; `/metrics` and
//! the detailed readiness can move to an operations listener of their own.

use paynode_tests::*;

/// Every `http_requests_total` line of a scrape.
fn http_lines(scrape: &str) -> Vec<&str> {
    scrape
        .lines()
        .filter(|l| l.starts_with("http_request"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_metric_labels_come_from_a_closed_set() {
    let node = TestNode::start(test_config().await).await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let odd_method = reqwest::Method::from_bytes(format!("X{}", &marker[..8]).as_bytes()).unwrap();
    // An invented method on a real route, and on a path that matches none.
    for path in ["/api/v1/payments".to_string(), format!("/no/such/{marker}")] {
        let status = node
            .http
            .request(odd_method.clone(), format!("{}{path}", node.base))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{path}: {status}");
    }
    let status = node
        .http
        .get(format!("{}/{marker}", node.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);
    let scrape = node.metrics_text().await;
    let lines = http_lines(&scrape);
    let leaked: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(&marker[..8]) || l.contains(&marker))
        .collect();
    assert!(leaked.is_empty(), "client input in labels: {leaked:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"/api/v1/payments\"")),
        "an unknown method is counted as other: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=\"GET\"") && l.contains("route=\"unmatched\"")),
        "an unmatched path has the fixed route label: {lines:#?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ops_listener_serves_metrics_and_readiness() {
    let mut config = test_config().await;
    config.ops.listen = Some("127.0.0.1:0".into());
    let node = TestNode::start(config).await;
    let ops = format!(
        "http://{}",
        node.node.ops_addr.expect("ops.listen set: an ops listener")
    );
    let response = node
        .http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let scrape = response.text().await.unwrap();
    assert!(scrape.contains("# TYPE"), "{scrape}");
    let ready = node
        .http
        .get(format!("{ops}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let live = node
        .http
        .get(format!("{ops}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    // The public listener no longer serves the metrics.
    let public = node
        .http
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        public.status().as_u16(),
        404,
        "public /metrics with ops.listen"
    );
    // Nor does the ops listener serve the API.
    let api = node
        .http
        .get(format!("{ops}/api/v1/payments/{}", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 404, "API on the ops listener");
    node.stop().await;
}
