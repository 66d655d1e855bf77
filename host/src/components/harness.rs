//! The per-plugin test harness: runs a component against a fixture file
//! (input → expected output; adapters also script their HTTP exchanges) and
//! checks built-in properties on every case: determinism (same input twice,
//! same output), host invariants (balanced postings, clamped delays) and
//! limits. Used by `paynode plugin test`, by uploads, and from `cargo test`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bindings::adapter::paynode::psp_adapter::types as adapter;
use super::bindings::policy::paynode::retry_policy::types as policy;
use super::bindings::rules::paynode::posting_rules::types as rules;
use super::egress_policy::{Egress, EgressPolicy};
use super::host_imports::HttpPolicy;
pub use super::http_script::{Exchange, HttpScript};
use super::invariants::{check_journals, PostingScope};
use super::runtime::{
    CallEnv, CallStats, Incoming, Notification, RefundRequest, RefundedOrder, Rejection,
};
use super::{Loaded, PluginError, Runtime, Slot};
use crate::config::SlotConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile {
    /// The JSON Schema the file follows (`wit/<slot>/fixtures.schema.json`),
    /// for editors; `plugin test` checks the file against it anyway.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub slot: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub cases: Vec<Case>,
    /// Test-only secrets for `crypto.hmac-sha256` (psp-adapter 2.0.0):
    /// fixtures sign with these, never with the node's secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// charge | status | refund | refund-status | parse-notification |
    /// decide | post
    pub call: String,
    pub input: Value,
    /// Overrides the file's config for this case.
    #[serde(default)]
    pub config: Option<BTreeMap<String, String>>,
    /// Scripted HTTP exchanges, in order (adapters only).
    #[serde(default)]
    pub http: Vec<Exchange>,
    pub expect: Value,
}

/// A harness call environment for `slot`: its limits, and for adapters the
/// HTTP policy the node would apply, with fake secrets (`fake-<name>`) in
/// place of real ones. With `policy`, requests it (or the slot's
/// `deny_hosts`) refuses are refused with the node's error and only the
/// secrets it binds resolve; without, any URL and any secret name pass.
pub fn env(slot: &SlotConfig, policy: Option<&EgressPolicy>) -> Result<CallEnv, String> {
    let mut env = CallEnv::offline(slot, "harness");
    env.http = Some(match policy {
        Some(policy) => http_policy(slot, Egress::approved(policy, &slot.deny_hosts)?, policy),
        None => http_policy(slot, Egress::open(), &EgressPolicy::default()),
    });
    Ok(env)
}

fn http_policy(slot: &SlotConfig, egress: Egress, policy: &EgressPolicy) -> HttpPolicy {
    let fakes = policy
        .secrets
        .iter()
        .map(|b| (b.name.clone(), format!("fake-{}", b.name).into()))
        .collect();
    HttpPolicy {
        client: super::egress::egress_client(),
        fake_secrets: egress.bound_names().is_none(),
        egress: Arc::new(egress),
        timeout: Duration::from_millis(slot.http_timeout_ms),
        max_response_bytes: slot.http_max_response_bytes,
        secrets: Arc::new(fakes),
        refused: Arc::default(),
    }
}

/// Result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    pub problems: Vec<String>,
    pub actual: Value,
    pub fuel_used: u64,
    pub peak_memory_bytes: usize,
    pub wall_us: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub component: String,
    pub sha256: String,
    pub cases: Vec<CaseReport>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.cases.is_empty() && self.cases.iter().all(|c| c.passed)
    }

    /// Human-readable: one line per case, a diff under each failure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({})",
            self.component,
            &self.sha256[..12.min(self.sha256.len())]
        );
        for case in &self.cases {
            let _ = writeln!(
                out,
                "  {} {:<50} fuel {:>10}  mem {:>7} KiB  {:>7} µs",
                if case.passed { "PASS" } else { "FAIL" },
                case.name,
                case.fuel_used,
                case.peak_memory_bytes / 1024,
                case.wall_us
            );
            for problem in &case.problems {
                for line in problem.lines() {
                    let _ = writeln!(out, "       {line}");
                }
            }
        }
        let passed = self.cases.iter().filter(|c| c.passed).count();
        let _ = writeln!(out, "{passed}/{} cases passed", self.cases.len());
        out
    }
}

/// The JSON Schema of a slot's fixture files, shipped beside its WIT.
pub fn schema(slot: Slot) -> &'static str {
    match slot {
        Slot::PspAdapter => include_str!("../../../wit/psp-adapter/fixtures.schema.json"),
        Slot::RetryPolicy => include_str!("../../../wit/retry-policy/fixtures.schema.json"),
        Slot::PostingRules => include_str!("../../../wit/posting-rules/fixtures.schema.json"),
    }
}

/// Checks what serde's structs leave open against the slot's schema: each
/// case's `call` is one of the slot's, its `expect` has one of the shapes
/// the schema lists, a scripted `error` is one the host can give. Err lists
/// every violation with its JSON path.
pub fn check_schema(file: &Value) -> Result<(), String> {
    let slot = file
        .get("slot")
        .and_then(Value::as_str)
        .and_then(Slot::parse)
        .ok_or("/slot: must be psp-adapter, retry-policy or posting-rules")?;
    let mut problems = Vec::new();
    let cases = file.get("cases").and_then(Value::as_array);
    for (i, case) in cases.into_iter().flatten().enumerate() {
        let call = case.get("call").and_then(Value::as_str).unwrap_or("");
        if !fixture_calls(slot).contains(&call) {
            problems.push(format!(
                "/cases/{i}/call: {call:?} is not a call of the {slot} world (1.0.0 or 2.0.0)"
            ));
        }
        let expect = case.get("expect").cloned().unwrap_or(Value::Null);
        let shaped = match (slot, call) {
            (Slot::PspAdapter, "parse-notification") => {
                serde_json::from_value::<ExpectedNotifications>(expect).err()
            }
            (Slot::PspAdapter, _) => serde_json::from_value::<ExpectedOutcome>(expect).err(),
            (Slot::RetryPolicy, _) => serde_json::from_value::<ExpectedDecision>(expect).err(),
            // `post-refund` answers as `post` does.
            (Slot::PostingRules, _) => serde_json::from_value::<ExpectedPost>(expect).err(),
        };
        if shaped.is_some() {
            problems.push(format!(
                "/cases/{i}/expect: not one of the shapes in wit/{slot}/fixtures.schema.json"
            ));
        }
        let exchanges = case.get("http").and_then(Value::as_array);
        for (j, exchange) in exchanges.into_iter().flatten().enumerate() {
            let error = exchange.pointer("/respond/error").and_then(Value::as_str);
            if error.is_some_and(|e| !SCRIPTED_ERRORS.contains(&e)) {
                problems.push(format!(
                    "/cases/{i}/http/{j}/respond/error: one of {SCRIPTED_ERRORS:?}"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "does not follow wit/{slot}/fixtures.schema.json:\n  {}",
            problems.join("\n  ")
        ))
    }
}

/// The host's `http-error` variants, as fixtures name them.
const SCRIPTED_ERRORS: &[&str] = &["timeout", "connect-failed", "refused", "failed-after-send"];

/// `"*"` matches anything; a `pluginError` is expected where the sandbox
/// must stop the call.
#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)] // only the shape is checked
enum ExpectedOutcome {
    Any(Wildcard),
    Succeeded { succeeded: String },
    Declined { declined: ExpectedFailure },
    Transient { transient: ExpectedFailure },
    Unknown { unknown: String },
    Failed(ExpectedPluginError),
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)]
enum ExpectedDecision {
    Any(Wildcard),
    Retry {
        #[serde(rename = "retryAfter")]
        retry_after: u64,
    },
    GiveUp {
        #[serde(rename = "giveUp")]
        give_up: String,
    },
    Failed(ExpectedPluginError),
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)]
enum ExpectedPost {
    Any(Wildcard),
    Ok { ok: Vec<Value> },
    Err { err: ExpectedFailure },
    Failed(ExpectedPluginError),
}

/// What `parse-notification` returns (psp-adapter 2.0.0): the shape of
/// [`notifications_json`].
#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)]
enum ExpectedNotifications {
    Any(Wildcard),
    Ok { ok: Vec<Value> },
    Err { err: ExpectedRejection },
    Failed(ExpectedPluginError),
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)]
enum ExpectedRejection {
    BadSignature {
        #[serde(rename = "badSignature")]
        bad_signature: String,
    },
    Malformed {
        malformed: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ExpectedFailure {
    code: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ExpectedPluginError {
    #[serde(rename = "pluginError")]
    plugin_error: String,
    #[serde(default)]
    detail: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Wildcard(WildcardText);

#[derive(Deserialize)]
enum WildcardText {
    #[serde(rename = "*")]
    Star,
}

/// The calls of a slot's world that fixtures must cover: every export but
/// `info`, which every load calls anyway.
pub fn required_calls(slot: Slot) -> &'static [&'static str] {
    match slot {
        Slot::PspAdapter => &["charge", "status"],
        Slot::RetryPolicy => &["decide"],
        Slot::PostingRules => &["post"],
    }
}

/// What a psp-adapter 2.0.0 adds to [`required_calls`].
pub const REQUIRED_V2_CALLS: &[&str] = &["refund", "refund-status", "parse-notification"];
/// What a posting-rules 2.0.0 adds.
pub const REQUIRED_RULES_V2_CALLS: &[&str] = &["post-refund"];

/// The calls a fixture case of `slot` may make: those of its 1.0.0 world
/// and of its 2.0.0 world, if it has one.
pub fn fixture_calls(slot: Slot) -> &'static [&'static str] {
    match slot {
        Slot::PspAdapter => &[
            "charge",
            "status",
            "refund",
            "refund-status",
            "parse-notification",
        ],
        Slot::RetryPolicy => &["decide"],
        Slot::PostingRules => &["post", "post-refund"],
    }
}

/// [`check_coverage`], plus the exports of the component's own contract
/// version (a psp-adapter 2.0.0 must show its refunds and notifications).
pub fn check_coverage_of(loaded: &Loaded, files: &[FixtureFile]) -> Result<(), String> {
    check_coverage(loaded.slot, files)?;
    if !loaded.supports_refunds() {
        return Ok(());
    }
    let required = match loaded.slot {
        Slot::PostingRules => REQUIRED_RULES_V2_CALLS,
        _ => REQUIRED_V2_CALLS,
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|call| !files.iter().flat_map(|f| &f.cases).any(|c| c.call == *call))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "fixtures have no case for {}: every export of the {} 2.0.0 world needs one",
            missing.join(", "),
            loaded.slot
        ));
    }
    Ok(())
}

/// Refuses fixtures that are missing, meant for another slot, or leave an
/// export of the slot's world without a case: a version goes live only with
/// evidence of what each of its entry points does.
pub fn check_coverage(slot: Slot, files: &[FixtureFile]) -> Result<(), String> {
    let required = required_calls(slot);
    if files.is_empty() {
        return Err(format!(
            "fixtures are required: at least one case for each of {}",
            required.join(", ")
        ));
    }
    if let Some(file) = files.iter().find(|f| f.slot != slot.as_str()) {
        return Err(format!(
            "fixtures are for {}, the component is pushed as a {slot}",
            file.slot
        ));
    }
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|call| !files.iter().flat_map(|f| &f.cases).any(|c| c.call == *call))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "fixtures have no case for {}: every export of the {slot} world needs one",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Runs every case of `fixtures` against `loaded`.
pub async fn run(
    runtime: &Runtime,
    loaded: &Loaded,
    fixtures: &FixtureFile,
    env: &CallEnv,
) -> Report {
    let mut cases = Vec::new();
    for case in &fixtures.cases {
        cases.push(run_case(runtime, loaded, fixtures, case, env).await);
    }
    if fixtures.slot != loaded.slot.as_str() {
        cases.push(CaseReport {
            name: "fixture slot".into(),
            passed: false,
            problems: vec![format!(
                "fixtures are for {}, component is a {}",
                fixtures.slot, loaded.slot
            )],
            actual: Value::Null,
            fuel_used: 0,
            peak_memory_bytes: 0,
            wall_us: 0,
        });
    }
    Report {
        component: format!("{} {}", loaded.name, loaded.version),
        sha256: loaded.sha256.clone(),
        cases,
    }
}

async fn run_case(
    runtime: &Runtime,
    loaded: &Loaded,
    file: &FixtureFile,
    case: &Case,
    env: &CallEnv,
) -> CaseReport {
    let config: Vec<(String, String)> = case
        .config
        .as_ref()
        .unwrap_or(&file.config)
        .clone()
        .into_iter()
        .collect();
    let mut problems = Vec::new();
    let first = call_once(runtime, loaded, file, case, &config, env).await;
    let second = call_once(runtime, loaded, file, case, &config, env).await;
    let (actual, stats, http_problems) = match first {
        Ok(done) => done,
        Err(error) => (
            json!({ "pluginError": error.class(), "detail": error.to_string() }),
            CallStats::default(),
            Vec::new(),
        ),
    };
    problems.extend(http_problems);
    let again = second
        .map(|(value, _, _)| value)
        .unwrap_or_else(|e| json!({ "pluginError": e.class() }));
    if again != actual {
        problems.push(format!("not deterministic: second run returned {again}"));
    }
    if !matches(&case.expect, &actual) {
        problems.push(diff(&case.expect, &actual));
    }
    problems.extend(invariant_problems(loaded.slot, case, &actual, env));
    CaseReport {
        name: case.name.clone(),
        passed: problems.is_empty(),
        problems,
        actual,
        fuel_used: stats.fuel_used,
        peak_memory_bytes: stats.peak_memory_bytes,
        wall_us: stats.wall.as_micros(),
    }
}

/// Host maximum for retry delays in the harness (the node's default).
const HARNESS_MAX_DELAY_MS: u64 = 120_000;

fn invariant_problems(slot: Slot, case: &Case, actual: &Value, _env: &CallEnv) -> Vec<String> {
    let mut problems = Vec::new();
    match slot {
        Slot::RetryPolicy => {
            if let Some(ms) = actual.get("retryAfter").and_then(Value::as_u64) {
                if ms > HARNESS_MAX_DELAY_MS {
                    problems.push(format!(
                        "delay {ms} ms exceeds the host maximum {HARNESS_MAX_DELAY_MS} ms"
                    ));
                }
            }
        }
        Slot::PostingRules => {
            if let (Some(entries), Ok(order)) = (
                actual.get("ok"),
                serde_json::from_value::<ScopeInput>(case.input.clone()),
            ) {
                if let Ok(entries) = entries_from_json(entries) {
                    let scope = PostingScope {
                        seller_id: &order.seller_id,
                        currency: &order.amount.currency,
                    };
                    if let Err(violation) = check_journals(&entries, &scope) {
                        problems.push(format!("host invariant: {violation}"));
                    }
                }
            }
        }
        Slot::PspAdapter => {}
    }
    problems
}

type CallResult = Result<(Value, CallStats, Vec<String>), PluginError>;

async fn call_once(
    runtime: &Runtime,
    loaded: &Loaded,
    file: &FixtureFile,
    case: &Case,
    config: &[(String, String)],
    env: &CallEnv,
) -> CallResult {
    let bad_input = |e: serde_json::Error| {
        PluginError::InvalidOutput(format!("fixture input does not parse: {e}"))
    };
    let mut env = env.clone();
    // Harness runs never sleep: a requested delay is recorded, not served.
    env.limits.max_delay_ms = 0;
    env.limits.wall = env.limits.wall.max(Duration::from_secs(10));
    match case.call.as_str() {
        "charge" | "status" => {
            let input: ChargeInput =
                serde_json::from_value(case.input.clone()).map_err(bad_input)?;
            let script = HttpScript::new(&case.http);
            env.script = Some(script.clone());
            if env.http.is_none() {
                env.http = self::env(&SlotConfig::default(), None)
                    .expect("an open harness policy always builds")
                    .http;
            }
            let request = input.into_wit();
            let (outcome, stats) = if case.call == "charge" {
                runtime.charge(loaded, &env, config, &request).await?
            } else {
                runtime.status(loaded, &env, config, &request).await?
            };
            Ok((outcome_json(&outcome), stats, script.finish()))
        }
        "refund" | "refund-status" => {
            let input: RefundInput =
                serde_json::from_value(case.input.clone()).map_err(bad_input)?;
            let script = HttpScript::new(&case.http).with_secrets(&file.secrets);
            env.script = Some(script.clone());
            let status = case.call == "refund-status";
            let request = input.into_wit();
            let (outcome, stats) = runtime
                .refund(loaded, &env, config, &request, status)
                .await?;
            Ok((outcome_json(&outcome), stats, script.finish()))
        }
        "parse-notification" => {
            let input: IncomingInput =
                serde_json::from_value(case.input.clone()).map_err(bad_input)?;
            let script = HttpScript::new(&case.http).with_secrets(&file.secrets);
            env.script = Some(script.clone());
            let incoming = Incoming {
                headers: input.headers.into_iter().collect(),
                body: input.body.into_bytes(),
                received_at: input.received_at.unwrap_or_else(unix_now),
            };
            let (result, stats) = runtime
                .parse_notification(loaded, &env, config, &incoming)
                .await?;
            Ok((notifications_json(&result), stats, script.finish()))
        }
        "decide" => {
            let input: DecideInput =
                serde_json::from_value(case.input.clone()).map_err(bad_input)?;
            let context = policy::RetryContext {
                payment_order_id: input.payment_order_id,
                attempt: input.attempt,
                failure_code: input.failure_code,
                elapsed_ms: input.elapsed_ms,
                random: input.random,
            };
            let (decision, stats) = runtime.decide(loaded, &env, config, &context).await?;
            let value = match decision {
                policy::Decision::RetryAfter(ms) => json!({ "retryAfter": ms }),
                policy::Decision::GiveUp(reason) => json!({ "giveUp": reason }),
            };
            Ok((value, stats, Vec::new()))
        }
        "post" => {
            let input: OrderInput =
                serde_json::from_value(case.input.clone()).map_err(bad_input)?;
            let order = input.into_wit();
            let (result, stats) = runtime.post(loaded, &env, config, &order).await?;
            let value = match result {
                Ok(entries) => json!({ "ok": entries.iter().map(entry_json).collect::<Vec<_>>() }),
                Err(e) => json!({ "err": { "code": e.code, "message": e.message } }),
            };
            Ok((value, stats, Vec::new()))
        }
        "post-refund" => {
            let input: RefundedInput =
                serde_json::from_value(case.input.clone()).map_err(bad_input)?;
            let refund = input.into_wit();
            let (result, stats) = runtime.post_refund(loaded, &env, config, &refund).await?;
            let value = match result {
                Ok(entries) => json!({ "ok": entries.iter().map(entry_json).collect::<Vec<_>>() }),
                Err(e) => json!({ "err": { "code": e.code, "message": e.message } }),
            };
            Ok((value, stats, Vec::new()))
        }
        other => Err(PluginError::InvalidOutput(format!(
            "unknown call {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoneyInput {
    quantity: i64,
    currency: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeInput {
    payment_order_id: String,
    payment_id: String,
    seller_id: String,
    amount: MoneyInput,
    attempt: u32,
    idempotency_key: String,
}

impl ChargeInput {
    fn into_wit(self) -> adapter::ChargeRequest {
        adapter::ChargeRequest {
            payment_order_id: self.payment_order_id,
            payment_id: self.payment_id,
            seller_id: self.seller_id,
            amount: adapter::Money {
                quantity: self.amount.quantity,
                currency: self.amount.currency,
            },
            attempt: self.attempt,
            idempotency_key: self.idempotency_key,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundInput {
    refund_id: String,
    payment_order_id: String,
    payment_id: String,
    seller_id: String,
    #[serde(default)]
    charge_reference: String,
    #[serde(default)]
    charge_idempotency_key: String,
    captured: MoneyInput,
    amount: MoneyInput,
    #[serde(default)]
    reason: String,
    attempt: u32,
    idempotency_key: String,
}

impl RefundInput {
    fn into_wit(self) -> RefundRequest {
        let money = |m: MoneyInput| adapter::Money {
            quantity: m.quantity,
            currency: m.currency,
        };
        RefundRequest {
            refund_id: self.refund_id,
            payment_order_id: self.payment_order_id,
            payment_id: self.payment_id,
            seller_id: self.seller_id,
            charge_reference: self.charge_reference,
            charge_idempotency_key: self.charge_idempotency_key,
            captured: money(self.captured),
            amount: money(self.amount),
            reason: self.reason,
            attempt: self.attempt,
            idempotency_key: self.idempotency_key,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundedInput {
    refund_id: String,
    payment_order_id: String,
    payment_id: String,
    seller_id: String,
    captured: MoneyInput,
    amount: MoneyInput,
    #[serde(default)]
    psp_reference: String,
}

impl RefundedInput {
    fn into_wit(self) -> RefundedOrder {
        let money = |m: MoneyInput| rules::Money {
            quantity: m.quantity,
            currency: m.currency,
        };
        RefundedOrder {
            refund_id: self.refund_id,
            payment_order_id: self.payment_order_id,
            payment_id: self.payment_id,
            seller_id: self.seller_id,
            captured: money(self.captured),
            amount: money(self.amount),
            psp_reference: self.psp_reference,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A notification as fixtures write it: headers and a UTF-8 body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IncomingInput {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    /// Unix seconds; the harness's clock when absent. Fixtures whose
    /// signatures carry a timestamp give it, so they hold on any day.
    received_at: Option<u64>,
}

pub fn notifications_json(result: &Result<Vec<Notification>, Rejection>) -> Value {
    use super::bindings::adapter_v2::paynode::psp_adapter::notifications::NotificationKind;
    match result {
        Ok(list) => json!({ "ok": list.iter().map(|n| json!({
            "eventId": n.event_id,
            "kind": match n.kind {
                NotificationKind::ChargeSucceeded => "charge-succeeded",
                NotificationKind::ChargeFailed => "charge-failed",
                NotificationKind::RefundSucceeded => "refund-succeeded",
                NotificationKind::RefundFailed => "refund-failed",
            },
            "idempotencyKey": n.idempotency_key,
            "pspReference": n.psp_reference,
            "message": n.message,
        })).collect::<Vec<_>>() }),
        Err(Rejection::BadSignature(why)) => json!({ "err": { "badSignature": why } }),
        Err(Rejection::Malformed(why)) => json!({ "err": { "malformed": why } }),
    }
}

/// The part of a `post` or `post-refund` input the host invariants need.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScopeInput {
    seller_id: String,
    amount: MoneyInput,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecideInput {
    payment_order_id: String,
    attempt: u32,
    #[serde(default)]
    failure_code: String,
    #[serde(default)]
    elapsed_ms: u64,
    #[serde(default)]
    random: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderInput {
    payment_order_id: String,
    payment_id: String,
    seller_id: String,
    amount: MoneyInput,
    status: String,
    #[serde(default)]
    psp_reference: String,
}

impl OrderInput {
    fn into_wit(self) -> rules::FinalizedOrder {
        rules::FinalizedOrder {
            payment_order_id: self.payment_order_id,
            payment_id: self.payment_id,
            seller_id: self.seller_id,
            amount: rules::Money {
                quantity: self.amount.quantity,
                currency: self.amount.currency,
            },
            status: if self.status.eq_ignore_ascii_case("succeeded") {
                rules::OrderStatus::Succeeded
            } else {
                rules::OrderStatus::Failed
            },
            psp_reference: self.psp_reference,
        }
    }
}

pub fn outcome_json(outcome: &adapter::Outcome) -> Value {
    match outcome {
        adapter::Outcome::Succeeded(reference) => json!({ "succeeded": reference }),
        adapter::Outcome::Declined(f) => {
            json!({ "declined": { "code": f.code, "message": f.message } })
        }
        adapter::Outcome::Transient(f) => {
            json!({ "transient": { "code": f.code, "message": f.message } })
        }
        adapter::Outcome::Unknown(reason) => json!({ "unknown": reason }),
    }
}

fn entry_json(entry: &rules::JournalEntry) -> Value {
    json!({
        "kind": entry.kind,
        "key": entry.key,
        "postings": entry.postings.iter().map(|p| json!({
            "account": p.account,
            "side": match p.side { rules::Side::Debit => "debit", rules::Side::Credit => "credit" },
            "amount": { "quantity": p.amount.quantity, "currency": p.amount.currency },
        })).collect::<Vec<_>>(),
    })
}

fn entries_from_json(value: &Value) -> Result<Vec<rules::JournalEntry>, serde_json::Error> {
    #[derive(Deserialize)]
    struct P {
        account: String,
        side: String,
        amount: MoneyInput,
    }
    #[derive(Deserialize)]
    struct E {
        kind: String,
        key: String,
        postings: Vec<P>,
    }
    let entries: Vec<E> = serde_json::from_value(value.clone())?;
    Ok(entries
        .into_iter()
        .map(|e| rules::JournalEntry {
            kind: e.kind,
            key: e.key,
            postings: e
                .postings
                .into_iter()
                .map(|p| rules::Posting {
                    account: p.account,
                    side: if p.side == "debit" {
                        rules::Side::Debit
                    } else {
                        rules::Side::Credit
                    },
                    amount: rules::Money {
                        quantity: p.amount.quantity,
                        currency: p.amount.currency,
                    },
                })
                .collect(),
        })
        .collect())
}

/// Expected matches actual; the string "*" in `expected` matches anything.
pub fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        _ => expected == actual,
    }
}

fn diff(expected: &Value, actual: &Value) -> String {
    let expected = serde_json::to_string_pretty(expected).unwrap_or_default();
    let actual = serde_json::to_string_pretty(actual).unwrap_or_default();
    let mut out = String::from("output differs (- expected, + actual):\n");
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => {
                let _ = writeln!(out, "  {x}");
            }
            (x, y) => {
                if let Some(x) = x {
                    let _ = writeln!(out, "- {x}");
                }
                if let Some(y) = y {
                    let _ = writeln!(out, "+ {y}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(slot: &str, calls: &[&str]) -> FixtureFile {
        FixtureFile {
            schema: None,
            slot: slot.into(),
            config: BTreeMap::new(),
            secrets: Default::default(),
            cases: calls
                .iter()
                .map(|call| Case {
                    name: format!("{call} case"),
                    call: call.to_string(),
                    input: Value::Null,
                    config: None,
                    http: Vec::new(),
                    expect: Value::Null,
                })
                .collect(),
        }
    }

    #[test]
    fn fixtures_must_cover_every_export_of_the_world() {
        let adapter = Slot::PspAdapter;
        assert!(check_coverage(adapter, &[]).is_err());
        let charge_only = check_coverage(adapter, &[file("psp-adapter", &["charge"])]);
        assert!(charge_only.is_err_and(|e| e.contains("status")));
        let split = [
            file("psp-adapter", &["charge"]),
            file("psp-adapter", &["status"]),
        ];
        assert_eq!(check_coverage(adapter, &split), Ok(()));
        let other_slot = check_coverage(Slot::RetryPolicy, &[file("posting-rules", &["post"])]);
        assert!(other_slot.is_err());
        assert_eq!(
            check_coverage(Slot::PostingRules, &[file("posting-rules", &["post"])]),
            Ok(())
        );
    }

    #[test]
    fn the_schema_catches_what_serde_would_let_through() {
        let mut good = json!({ "slot": "retry-policy", "cases": [{ "name": "n", "call": "decide",
            "input": { "paymentOrderId": "po", "attempt": 1 }, "expect": { "retryAfter": 10 } }] });
        assert_eq!(check_schema(&good), Ok(()));
        good["cases"][0]["expect"] = json!({ "retryAfter": "soon" });
        let error = check_schema(&good).unwrap_err();
        assert!(error.contains("/cases/0/expect"), "{error}");
        good["cases"][0]["call"] = json!("charge");
        assert!(check_schema(&good).is_err());
    }

    #[test]
    fn the_schema_check_takes_the_calls_of_the_2_0_0_worlds() {
        let mut file = json!({ "slot": "psp-adapter", "cases": [{ "name": "n", "call": "refund",
            "input": {}, "expect": { "succeeded": "rf_1" } }] });
        assert_eq!(check_schema(&file), Ok(()));
        file["cases"][0]["call"] = json!("parse-notification");
        assert!(
            check_schema(&file).is_err(),
            "an outcome is not a notification list"
        );
        file["cases"][0]["expect"] = json!({ "err": { "badSignature": "*" } });
        assert_eq!(check_schema(&file), Ok(()));
        file["cases"][0]["expect"] = json!({ "ok": [] });
        assert_eq!(check_schema(&file), Ok(()));
        file["cases"][0]["call"] = json!("post-refund");
        assert!(check_schema(&file).is_err());
        let rules = json!({ "slot": "posting-rules", "cases": [{ "name": "n", "call": "post-refund",
            "input": {}, "expect": { "err": { "code": "c", "message": "*" } } }] });
        assert_eq!(check_schema(&rules), Ok(()));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches(
            &json!({"a": "*", "b": 1}),
            &json!({"a": "anything", "b": 1})
        ));
        assert!(!matches(
            &json!({"a": "*", "b": 1}),
            &json!({"a": "x", "b": 2})
        ));
        assert!(!matches(&json!({"a": 1}), &json!({"a": 1, "extra": true})));
    }
}
