//! Keeps `deploy/` honest against the node it deploys:
//!
//! - every metric the Grafana dashboard and the Prometheus alert rules query
//!   is a series a real node renders at `/metrics` (the node is driven until
//!   each one exists: retries, a review, a trapping component, a DLQ record
//!   and a failing outbox batch);
//! - every config key in the Helm values, the ConfigMap's `[stages]` groups,
//!   and every `PAYNODE_*` variable in the chart, compose file and Dockerfile
//!   is one `paynode::config::Config` accepts (it denies unknown fields);
//! - `promtool check rules` accepts the alert rules.
//!
//! Metric names are compared with *sample* names as rendered, so a histogram
//! must be queried as `_bucket`, `_sum` or `_count`, never by its bare name.
//! Names that are only described (`# HELP`) but never recorded are not
//! rendered by metrics-exporter-prometheus, so they do not count: the test
//! makes every referenced series appear for real.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value as FigValue;
use figment::Figment;
use paynode::config::Config;
use paynode_tests::*;
use secrecy::ExposeSecret;
use serde_json::Value;

fn deploy_path(relative: &str) -> PathBuf {
    workspace_root().join("deploy").join(relative)
}

fn read_deploy(relative: &str) -> String {
    let path = deploy_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// PromQL: metric identifiers of an expression.
// ---------------------------------------------------------------------------

/// Words that are PromQL keywords or operators, never metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Aggregation operators, which may take `by (...)` before their argument.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Whether the next word after position `i` (spaces skipped) is `word`.
fn next_word_is(chars: &[char], mut i: usize, word: &str) -> bool {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    chars[start..i]
        .iter()
        .collect::<String>()
        .eq_ignore_ascii_case(word)
}

/// Metric names used by a PromQL expression: identifiers that are not
/// function or aggregation calls (followed by `(`), keywords, label names
/// (inside `{}` or the label list after `by`/`without`/`on`/`ignoring`/
/// `group_*`), durations (`[5m]`), strings, numbers or Grafana variables.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Set after a keyword that takes a parenthesised label list.
    let mut label_list_next = false;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        chars.get(j).copied()
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && c != '`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                // Label matchers or a range/subquery duration: skip to the
                // matching close, strings included.
                let close = if c == '{' { '}' } else { ']' };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                        let quote = chars[i];
                        i += 1;
                        while i < chars.len() && chars[i] != quote {
                            if chars[i] == '\\' && quote != '`' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if label_list_next => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                label_list_next = false;
            }
            '$' => {
                // Grafana variable: $job, ${job}, $__rate_interval.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (1e3, 0x1f, 5m, 1h30m).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    // group_left/group_right may omit their label list.
                    label_list_next = next_non_space(i) == Some('(');
                } else if KEYWORDS.contains(&lower.as_str()) || next_non_space(i) == Some('(') {
                    // keyword, or a function / aggregation call
                } else if AGGREGATIONS.contains(&lower.as_str())
                    && ["by", "without"].iter().any(|k| next_word_is(&chars, i, k))
                {
                    // `sum by (le) (...)`: aggregation with a leading clause
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Metric names of a Grafana templating query such as
/// `label_values(http_requests_total, job)`.
fn grafana_query_metric_names(query: &str) -> BTreeSet<String> {
    let query = query.trim();
    if let Some(args) = query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((selector, _label)) => promql_metric_names(selector),
            None => BTreeSet::new(), // label_values(label): no metric
        };
    }
    if let Some(inner) = query
        .strip_prefix("query_result(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        return promql_metric_names(inner);
    }
    if let Some(inner) = query
        .strip_prefix("metrics(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        assert!(inner.trim().is_empty(), "metrics() regex query: {query}");
        return BTreeSet::new();
    }
    promql_metric_names(query)
}

/// Every PromQL expression in the dashboard (panel targets, nested panels
/// in rows, templating queries), with where it was found.
fn dashboard_metric_names() -> BTreeMap<String, String> {
    fn walk(value: &Value, path: &str, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let here = format!("{path}.{key}");
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => {
                            for name in promql_metric_names(expr) {
                                out.entry(name).or_insert_with(|| here.clone());
                            }
                        }
                        ("templating", templating) => {
                            // Only `query` variables hold PromQL (a
                            // `datasource` variable's query is a plugin type).
                            let list = templating["list"].as_array().cloned().unwrap_or_default();
                            for (i, variable) in list.iter().enumerate() {
                                if variable["type"] != "query" {
                                    continue;
                                }
                                let at = format!("{here}.list[{i}]");
                                let queries = [
                                    &variable["definition"],
                                    &variable["query"],
                                    &variable["query"]["query"],
                                ];
                                for query in queries.into_iter().filter_map(Value::as_str) {
                                    for name in grafana_query_metric_names(query) {
                                        out.entry(name).or_insert_with(|| at.clone());
                                    }
                                }
                            }
                        }
                        _ => walk(value, &here, out),
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&read_deploy("grafana/paynode-dashboard.json"))
        .expect("dashboard is JSON");
    let mut out = BTreeMap::new();
    walk(&dashboard, "dashboard", &mut out);
    out
}

fn alert_metric_names() -> BTreeMap<String, String> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read_deploy("prometheus/alerts.yml")).expect("alerts.yml is YAML");
    let mut out = BTreeMap::new();
    let groups = rules["groups"].as_sequence().expect("groups");
    for group in groups {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr is a string");
            for metric in promql_metric_names(expr) {
                out.entry(metric)
                    .or_insert_with(|| format!("alerts.yml {name}"));
            }
        }
    }
    out
}

#[test]
fn promql_tokenizer_finds_metrics_only() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.95, sum by (le, slot) (rate(x_seconds_bucket{job=~"$job",a="b{c}"}[$__rate_interval]))) / on(slot) group_left y_total > bool 1e3 and ignoring (z) up offset 5m"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["x_seconds_bucket".into(), "y_total".into(), "up".into()])
    );
    assert_eq!(
        promql_metric_names("sum by (topic) (increase(dlq_messages_total[5m])) > 100"),
        BTreeSet::from(["dlq_messages_total".to_string()])
    );
    assert_eq!(
        grafana_query_metric_names("label_values(http_requests_total{route=\"x\"}, job)"),
        BTreeSet::from(["http_requests_total".to_string()])
    );
}

// ---------------------------------------------------------------------------
// (a) Metric names against a real node's /metrics.
// ---------------------------------------------------------------------------

/// Sample names (no labels) of a Prometheus text exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

async fn scrape(node: &TestNode) -> String {
    let response = node
        .http
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.expect("metrics body")
}

/// A node whose PSP adapter answers from a script (see the simulator).
async fn scripted_config(script: &str, status_script: &str) -> Config {
    let mut config = test_config().await;
    config.components.psp_adapter.config = BTreeMap::from([
        ("scenario".into(), "scripted".into()),
        ("script".into(), script.into()),
        ("status-script".into(), status_script.into()),
    ]);
    config.components.retry_policy.config = BTreeMap::from([
        ("base-ms".into(), "50".into()),
        ("cap-ms".into(), "200".into()),
    ]);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_alerts_query_only_metrics_the_node_exports() {
    let dashboard = dashboard_metric_names();
    let alerts = alert_metric_names();

    // The dashboard covers what operators need (the names the brief lists).
    for wanted in [
        "payments_accepted_total",
        "psp_calls_total",
        "psp_call_latency_seconds_bucket",
        "redis_retry_zset_size",
        "redis_retry_batch_size",
        "redis_retry_events_total",
        "outbox_event_backlog",
        "outbox_dispatched_total",
        "outbox_dispatch_failed_total",
        "kafka_consumergroup_lag",
        "dlq_messages_total",
        "component_calls_total",
        "component_failures_total",
        "component_call_duration_seconds_bucket",
        "component_active_info",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(
            dashboard.contains_key(wanted),
            "dashboard has no panel on {wanted}"
        );
    }
    for wanted in [
        "dlq_messages_total",
        "outbox_event_backlog",
        "kafka_consumergroup_lag",
        "component_failures_total",
        "payment_orders_requires_review_total",
        "psp_calls_total",
    ] {
        assert!(
            alerts.contains_key(wanted),
            "alerts.yml has no rule on {wanted}"
        );
    }

    let mut referenced = dashboard.clone();
    for (name, place) in &alerts {
        referenced
            .entry(name.clone())
            .or_insert_with(|| place.clone());
    }

    // Node A: first attempt transient (a retry through Redis), second
    // unknown and never settled by status checks (REQUIRES_REVIEW).
    let a = TestNode::start(scripted_config("transient,unknown", "unknown").await).await;
    // Node B: a retry policy that traps; the applier dead-letters the result.
    let mut config_b = scripted_config("transient", "succeeded").await;
    config_b.components.retry_policy.default_component = "hostile-panic".into();
    config_b.components.retry_policy.config = BTreeMap::new();
    let b = TestNode::start(config_b).await;

    let (status, body) = a
        .post_payment("deploy-assets-a", &payment_body("o-1", &[("s-1", 100)]))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status_b, body_b) = b
        .post_payment("deploy-assets-b", &payment_body("o-2", &[("s-1", 100)]))
        .await;
    assert_eq!(status_b, 202, "{body_b}");
    let view = a
        .wait_final(body["paymentId"].as_str().expect("paymentId"))
        .await;
    assert_eq!(
        view["paymentOrders"][0]["status"], "REQUIRES_REVIEW",
        "{view:#}"
    );

    // An outbox row for a topic the node does not know: the dispatcher
    // fails that batch (outbox_dispatch_failed_total). Done last, as the
    // row blocks node A's outbox from here on.
    sqlx::query(
        "INSERT INTO outbox_event (event_id, topic, message_key, envelope)
         VALUES ($1, 'deploy_assets_no_such_topic', 'deploy-assets', '{}'::jsonb)",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&a.pool)
    .await
    .expect("insert outbox row");

    // One registry per process: both nodes render the same series. Poll
    // until every referenced name is there (gauges are probed every 5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (exported, missing) = loop {
        let exported = sample_names(&scrape(&a).await);
        let missing: Vec<String> = referenced
            .iter()
            .filter(|(name, _)| !exported.contains(*name))
            .map(|(name, place)| format!("{name} (used in {place})"))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (exported, missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    a.stop().await;
    b.stop().await;
    assert!(
        missing.is_empty(),
        "metrics queried by deploy/ but not exported by the node:\n  {}\nexported: {exported:?}",
        missing.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// (b) Config keys.
// ---------------------------------------------------------------------------

/// Loads defaults + `toml` + `env` the way `Config::load` does: figment, the
/// TOML provider, and `PAYNODE_` variables turned into key paths by the same
/// rule as `Env::prefixed("PAYNODE_").split("__")` (lower-cased, `__` → `.`,
/// values parsed with figment's own `Value` parser).
fn load_config(what: &str, toml: &str, env: &[(String, String)]) -> Config {
    let mut figment =
        Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
    for (name, value) in env {
        let key = name
            .strip_prefix("PAYNODE_")
            .unwrap_or_else(|| panic!("{what}: {name} is not a PAYNODE_ variable"))
            .to_ascii_lowercase()
            .replace("__", ".");
        assert!(
            !key.is_empty() && !key.split('.').any(str::is_empty),
            "{what}: malformed variable {name}"
        );
        let parsed: FigValue = value.parse().expect("figment values always parse");
        let nested = figment::util::nest(&key, parsed);
        figment = figment.merge(Serialized::defaults(nested));
    }
    let config: Config = figment
        .extract()
        .unwrap_or_else(|e| panic!("{what}: the node refuses this configuration: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{what}: invalid configuration: {e:#}"));
    config
}

/// A YAML mapping as TOML text, for figment's TOML provider.
fn yaml_to_toml(what: &str, value: &serde_yaml::Value) -> String {
    let json: Value = serde_json::to_value(value).expect("YAML as JSON");
    let dict: figment::value::Dict = Figment::from(Serialized::defaults(&json))
        .extract()
        .unwrap_or_else(|e| panic!("{what}: not a table: {e}"));
    // Rendered like the chart's paynode.tomlTable helper: quoted keys,
    // scalars first, then sub-tables; JSON scalars and arrays are valid TOML.
    let mut out = String::new();
    fn emit(out: &mut String, path: &[String], dict: &figment::value::Dict) {
        let quoted = |k: &String| serde_json::to_string(k).unwrap();
        let mut tables = Vec::new();
        if !path.is_empty() {
            out.push_str(&format!(
                "[{}]\n",
                path.iter().map(quoted).collect::<Vec<_>>().join(".")
            ));
        }
        for (key, value) in dict {
            match value {
                FigValue::Dict(_, inner) => tables.push((key.clone(), inner)),
                other => {
                    let json = serde_json::to_string(other).expect("value as JSON");
                    out.push_str(&format!("{} = {json}\n", quoted(key)));
                }
            }
        }
        for (key, inner) in tables {
            let mut deeper = path.to_vec();
            deeper.push(key);
            emit(out, &deeper, inner);
        }
    }
    emit(&mut out, &[], &dict);
    out
}

/// `PAYNODE_*` names in a file, skipping ones a template completes
/// (`PAYNODE_STAGES__{{ upper $stage }}`), which are checked from values.
fn paynode_vars_in(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("PAYNODE_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // `PAYNODE_STAGES__{{ upper $stage }}` is completed by the template
        // (checked from values); `PAYNODE_<SECTION>__<KEY>` is prose.
        if !tail[end..].starts_with("{{") && !name.ends_with('_') {
            vars.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    vars
}

/// A value of the right shape for a variable whose value the chart takes
/// from a Secret or the downward API: all of those are strings (long enough
/// for an HS256 secret).
const SECRET_LIKE: &str = "placeholder-value-from-a-kubernetes-secret";

/// What a deployment adds to an image or a bare `paynode.toml`: the node
/// refuses to start without an HS256 secret of its own.
fn deployment_secret() -> Vec<(String, String)> {
    vec![(
        "PAYNODE_AUTH__HS256_SECRET".to_string(),
        SECRET_LIKE.to_string(),
    )]
}

#[test]
fn helm_values_and_templates_use_only_real_config_keys() {
    let values: serde_yaml::Value = serde_yaml::from_str(&read_deploy("helm/paynode/values.yaml"))
        .expect("values.yaml is YAML");

    // The ConfigMap's paynode.toml: `config` plus the Kafka values the chart
    // folds into [kafka] (see paynode.configDict in _helpers.tpl).
    let mut config_section = values["config"].clone();
    let kafka = &values["kafka"];
    let folded = config_section
        .as_mapping_mut()
        .expect("config is a mapping")
        .entry("kafka".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let folded = folded.as_mapping_mut().expect("config.kafka is a mapping");
    folded.insert("brokers".into(), kafka["brokers"].clone());
    folded.insert(
        "security_protocol".into(),
        kafka["securityProtocol"].clone(),
    );
    folded.insert("sasl_mechanism".into(), kafka["sasl"]["mechanism"].clone());
    folded.insert("sasl_username".into(), kafka["sasl"]["username"].clone());
    folded.insert(
        "ssl_ca_location".into(),
        format!(
            "/etc/paynode/kafka-ca/{}",
            kafka["tls"]["caKey"].as_str().expect("caKey")
        )
        .into(),
    );
    let toml = yaml_to_toml("values.yaml config", &config_section);
    let base = load_config("values.yaml config", &toml, &deployment_secret());
    assert_eq!(base.kafka.security_protocol, "SASL_SSL");

    // Static PAYNODE_* names in the templates (the env block every group and
    // the chart share); their values come from Secrets or the downward API.
    let templates = deploy_path("helm/paynode/templates");
    let mut template_vars = BTreeSet::new();
    for entry in std::fs::read_dir(&templates).expect("templates dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("template");
        template_vars.extend(paynode_vars_in(&text));
    }
    // Adapter secrets are a map in values: the env block ranges over it,
    // so every entry becomes PAYNODE_SECRETS__<NAME> (read from its
    // kebab-case key) and a new adapter's secret needs no template change.
    let env_tpl = std::fs::read_to_string(templates.join("_env.tpl")).expect("_env.tpl");
    assert!(
        env_tpl.contains("range $name, $_ := .Values.secrets")
            && env_tpl.contains("PAYNODE_SECRETS__{{ upper $name }}"),
        "the env block does not export every entry of values.secrets"
    );
    let secret_tpl = std::fs::read_to_string(templates.join("secret.yaml")).expect("secret.yaml");
    assert!(
        secret_tpl.contains("range $name, $value := .Values.secrets"),
        "the chart's Secret does not store every entry of values.secrets"
    );
    let secrets = values["secrets"].as_mapping().expect("values.secrets");
    assert!(
        !secrets.is_empty(),
        "values.secrets lists no adapter secret"
    );
    for name in secrets.keys() {
        let name = name.as_str().expect("secret name");
        template_vars.insert(format!("PAYNODE_SECRETS__{}", name.to_uppercase()));
    }
    for expected in [
        "PAYNODE_HTTP__LISTEN",
        "PAYNODE_DATABASE__URL",
        "PAYNODE_REDIS__URL",
        "PAYNODE_AUTH__HS256_SECRET",
        "PAYNODE_KAFKA__SASL_PASSWORD",
        "PAYNODE_SECRETS__PSP_API_KEY",
        "PAYNODE_STAGES__INSTANCE_ID",
    ] {
        assert!(
            template_vars.contains(expected),
            "templates do not set {expected}"
        );
    }
    let template_env: Vec<(String, String)> = template_vars
        .iter()
        .map(|name| {
            let value = if name == "PAYNODE_HTTP__LISTEN" {
                "0.0.0.0:8080".to_string()
            } else {
                SECRET_LIKE.to_string()
            };
            (name.clone(), value)
        })
        .collect();
    let loaded = load_config("helm templates", &toml, &template_env);
    assert_eq!(
        loaded.secrets.get("psp_api_key").map(|s| s.expose_secret()),
        Some(SECRET_LIKE)
    );
    assert_eq!(loaded.stages.instance_id, SECRET_LIKE);

    // Per-group [stages] worker counts, exported as PAYNODE_STAGES__<KEY>.
    let groups = values["groups"].as_mapping().expect("groups");
    let mut seen = BTreeSet::new();
    for (group, spec) in groups {
        let group = group.as_str().expect("group name");
        seen.insert(group.to_string());
        let kind = spec["kind"].as_str().expect("kind");
        assert!(
            matches!(kind, "Deployment" | "StatefulSet"),
            "{group}: kind {kind}"
        );
        let mut env = template_env.clone();
        for (stage, workers) in spec["stages"].as_mapping().expect("stages") {
            let stage = stage.as_str().expect("stage key");
            let value = match workers {
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.as_u64().expect("worker count").to_string(),
                other => panic!("{group}.{stage}: {other:?}"),
            };
            env.push((
                format!("PAYNODE_STAGES__{}", stage.to_ascii_uppercase()),
                value,
            ));
        }
        let stages = load_config(&format!("group {group}"), &toml, &env).stages;
        // Metrics and probes are served by the HTTP server: keep it on.
        assert!(
            stages.http,
            "{group}: http must stay enabled for /metrics and probes"
        );
        let running: BTreeSet<&str> = [
            ("outbox_dispatcher", stages.outbox_dispatcher),
            ("payment_order_enqueuer", stages.payment_order_enqueuer),
            ("psp_call_executor", stages.psp_call_executor),
            ("psp_result_applier", stages.psp_result_applier),
            ("retry_scheduler", stages.retry_scheduler),
            (
                "ledger_request_dispatcher",
                stages.ledger_request_dispatcher,
            ),
            (
                "ledger_recording_consumer",
                stages.ledger_recording_consumer,
            ),
            ("account_balance_consumer", stages.account_balance_consumer),
        ]
        .into_iter()
        .filter(|(_, workers)| *workers > 0)
        .map(|(name, _)| name)
        .collect();
        let expected: BTreeSet<&str> = match group {
            "intake" => BTreeSet::from(["outbox_dispatcher"]),
            "psp" => BTreeSet::from([
                "payment_order_enqueuer",
                "psp_call_executor",
                "psp_result_applier",
                "retry_scheduler",
            ]),
            "ledger" => BTreeSet::from([
                "ledger_request_dispatcher",
                "ledger_recording_consumer",
                "account_balance_consumer",
            ]),
            other => panic!("unexpected group {other}"),
        };
        assert_eq!(running, expected, "{group}: stages running");
        if group != "intake" {
            assert_eq!(
                kind, "StatefulSet",
                "{group}: stable ordinals need a StatefulSet"
            );
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["intake".into(), "psp".into(), "ledger".into()])
    );
}

#[test]
fn compose_and_dockerfile_use_only_real_config_keys() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read_deploy("compose/docker-compose.yml")).expect("compose is YAML");
    let services = compose["services"].as_mapping().expect("services");
    for wanted in [
        "kafka",
        "postgres",
        "redis",
        "keycloak",
        "paynode",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains_key(wanted),
            "compose has no {wanted} service"
        );
    }
    let mut checked = 0;
    for (service, spec) in services {
        let service = service.as_str().expect("service name");
        let env: Vec<(String, String)> = match &spec["environment"] {
            serde_yaml::Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        serde_yaml::Value::Null => String::new(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().expect("env name").to_string(), value)
                })
                .collect(),
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .map(|item| {
                    let item = item.as_str().expect("NAME=value");
                    let (k, v) = item.split_once('=').unwrap_or((item, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            _ => Vec::new(),
        };
        let ours: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PAYNODE_"))
            .collect();
        if ours.is_empty() {
            continue;
        }
        checked += ours.len();
        let config = load_config(&format!("compose service {service}"), "", &ours);
        assert_eq!(
            config.http.listen, "0.0.0.0:8080",
            "{service}: listen on every interface"
        );
        assert!(
            config.database.url.contains("@postgres:"),
            "{service}: database host"
        );
        assert_eq!(config.kafka.brokers, "kafka:9092", "{service}: brokers");
    }
    assert!(
        checked > 0,
        "the paynode service sets no PAYNODE_* variable"
    );

    // ENV lines of the image.
    let dockerfile = read_deploy("compose/Dockerfile");
    let mut env = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        let body = if let Some(rest) = line.strip_prefix("ENV ") {
            rest
        } else if in_env {
            line
        } else {
            continue;
        };
        in_env = body.ends_with('\\');
        for pair in body.trim_end_matches('\\').split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
    }
    let ours: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PAYNODE_"))
        .collect();
    assert!(!ours.is_empty(), "Dockerfile sets no PAYNODE_* variable");
    let config = load_config("Dockerfile ENV", "", &[ours, deployment_secret()].concat());
    assert_eq!(config.http.listen, "0.0.0.0:8080");
}

// ---------------------------------------------------------------------------
// (c) promtool.
// ---------------------------------------------------------------------------

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = deploy_path("prometheus/alerts.yml");
    let output = match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run promtool ({error}); install it (Debian: apt-get install prometheus) to check {}",
            rules.display()
        ),
    };
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
