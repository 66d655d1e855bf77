//! Prometheus metrics (seed names kept). Recorded through the `metrics`
//! facade; rendered at `GET /metrics` by metrics-exporter-prometheus.

use std::sync::OnceLock;
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::components::PluginError;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other metrics recorder installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("outbox_event_backlog", "Outbox rows not yet published");
    describe_counter!(
        "outbox_dispatched_total",
        "Outbox rows published, per worker"
    );
    describe_counter!(
        "outbox_dispatch_failed_total",
        "Failed outbox batches, per worker"
    );
    describe_gauge!("redis_retry_zset_size", "Retries waiting in Redis");
    describe_gauge!(
        "redis_retry_batch_size",
        "Size of the last retry batch dispatched"
    );
    describe_counter!("redis_retry_events_total", "Retry queue events by result");
    describe_counter!("psp_calls_total", "PSP calls by outcome");
    describe_counter!(
        "refunds_total",
        "Refunds by result: requested, rejected, succeeded, failed, requires_review"
    );
    describe_counter!(
        "psp_notifications_total",
        "PSP notifications (webhooks) by result: applied, unchanged, duplicate, contradicted, unknown_subject, bad_signature, malformed"
    );
    describe_counter!(
        "kafka_producer_reinit_total",
        "Transactional producers replaced after they became unusable (fatal, fenced)"
    );
    describe_histogram!(
        "psp_call_latency_seconds",
        "PSP call latency, status checks included"
    );
    describe_gauge!(
        "kafka_consumergroup_lag",
        "Records behind the high watermark per group/topic/partition"
    );
    describe_counter!(
        "pipeline_messages_total",
        "Records handled per stage and batch result"
    );
    describe_histogram!(
        "pipeline_batch_seconds",
        "Time to decide and commit one batch per stage"
    );
    describe_counter!(
        "dlq_messages_total",
        "Records sent to a DLQ per stage, topic and error class"
    );
    describe_counter!(
        "component_calls_total",
        "Component calls per slot and result"
    );
    describe_histogram!(
        "component_call_duration_seconds",
        "Component call duration per slot"
    );
    describe_counter!(
        "component_failures_total",
        "Component failures per slot and class (trap, timeout, resource_limit...)"
    );
    describe_gauge!("component_active_info", "1 for the active version per slot");
    describe_counter!(
        "component_egress_refused_total",
        "Adapter HTTP requests refused by the egress policy or the host's checks, per plugin"
    );
    describe_counter!(
        "payment_orders_requires_review_total",
        "Orders moved to REQUIRES_REVIEW"
    );
    describe_counter!("payments_accepted_total", "Payments accepted at intake");
    describe_gauge!(
        "reconcile_breaches",
        "Breaches found by the periodic reconciliation, per check"
    );
    describe_counter!(
        "http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        "HTTP request latency by route"
    );
}

pub fn stage_batch(stage: &'static str, result: &'static str, records: usize, started: Instant) {
    counter!("pipeline_messages_total", "stage" => stage, "result" => result)
        .increment(records as u64);
    histogram!("pipeline_batch_seconds", "stage" => stage).record(started.elapsed().as_secs_f64());
}

pub fn dlq(stage: &'static str, topic: &'static str, class: &'static str) {
    counter!("dlq_messages_total", "stage" => stage, "topic" => topic, "class" => class)
        .increment(1);
}

pub fn component_call(slot: &'static str, started: Instant, error: Option<&PluginError>) {
    let result = error.map_or("ok", PluginError::class);
    counter!("component_calls_total", "slot" => slot, "result" => result).increment(1);
    histogram!("component_call_duration_seconds", "slot" => slot)
        .record(started.elapsed().as_secs_f64());
    if let Some(error) = error {
        component_failure(slot, error.class());
    }
}

pub fn component_failure(slot: &'static str, class: &'static str) {
    counter!("component_failures_total", "slot" => slot, "class" => class).increment(1);
}

/// A shadow candidate's output against the active version's: same, changed,
/// rejected (it failed or broke an invariant) or skipped (runtime busy).
pub fn component_shadow(slot: &'static str, result: &'static str) {
    counter!("component_shadow_total", "slot" => slot, "result" => result).increment(1);
}

/// An adapter request the host refused before sending it (outside the
/// activation's egress policy, a secret where it is not bound, ...).
pub fn egress_refused(plugin: &str) {
    counter!("component_egress_refused_total", "plugin" => plugin.to_string()).increment(1);
}

pub fn component_active(slot: &'static str, sha256: &str, name: &str, version: &str) {
    gauge!("component_active_info", "slot" => slot, "sha256" => sha256.to_string(),
        "name" => name.to_string(), "version" => version.to_string())
    .set(1.0);
}

pub fn psp_call(result: &'static str, started: Instant) {
    counter!("psp_calls_total", "result" => result).increment(1);
    histogram!("psp_call_latency_seconds").record(started.elapsed().as_secs_f64());
}

pub fn producer_reinit() {
    counter!("kafka_producer_reinit_total").increment(1);
}

pub fn retry_event(result: &'static str) {
    counter!("redis_retry_events_total", "result" => result).increment(1);
}

pub fn retry_batch(size: usize) {
    gauge!("redis_retry_batch_size").set(size as f64);
}

pub fn retry_queue_size(size: u64) {
    gauge!("redis_retry_zset_size").set(size as f64);
}

pub fn refund(result: &'static str) {
    counter!("refunds_total", "result" => result).increment(1);
}

pub fn notification(result: &'static str) {
    counter!("psp_notifications_total", "result" => result).increment(1);
}

pub fn requires_review() {
    counter!("payment_orders_requires_review_total").increment(1);
}

pub fn outbox_dispatched(worker: &str, count: usize) {
    counter!("outbox_dispatched_total", "worker" => worker.to_string()).increment(count as u64);
}

pub fn outbox_dispatch_failed(worker: &str) {
    counter!("outbox_dispatch_failed_total", "worker" => worker.to_string()).increment(1);
}

pub fn outbox_backlog(rows: i64) {
    gauge!("outbox_event_backlog").set(rows as f64);
}

pub fn payment_accepted() {
    counter!("payments_accepted_total").increment(1);
}

pub fn consumer_lag(group: &str, topic: &str, partition: i32, lag: i64) {
    gauge!("kafka_consumergroup_lag", "group" => group.to_string(), "topic" => topic.to_string(),
        "partition" => partition.to_string())
    .set(lag as f64);
}

/// `route` is a route template (or "unmatched"), `method` one of a closed
/// set: no label value comes from raw client input.
pub fn http_request(route: &str, method: &'static str, status: u16, started: Instant) {
    counter!("http_requests_total", "route" => route.to_string(), "method" => method,
        "status" => status.to_string())
    .increment(1);
    histogram!("http_request_duration_seconds", "route" => route.to_string())
        .record(started.elapsed().as_secs_f64());
}

pub fn reconcile_breaches(check: &'static str, breaches: i64) {
    gauge!("reconcile_breaches", "check" => check).set(breaches as f64);
}
