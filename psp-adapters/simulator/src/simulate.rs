//! The whole simulator minus the host calls: config parsing, the choice
//! between a random scenario and a script, and the delay to ask for.

use paynode_guest::{outcome, Outcome};

use crate::draws::call_hash;
use crate::refunds::refund_reference;
use crate::scenarios::{outcome_of, plan, Kind, Scenario};
use crate::scripted::script_entry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Charge,
    Status,
    Refund,
    RefundStatus,
}

impl Op {
    /// The config key of its script (scripted scenario).
    fn script_key(self) -> &'static str {
        match self {
            Op::Charge => "script",
            Op::Status => "status-script",
            Op::Refund => "refund-script",
            Op::RefundStatus => "refund-status-script",
        }
    }

    pub(crate) fn is_status(self) -> bool {
        matches!(self, Op::Status | Op::RefundStatus)
    }

    pub(crate) fn is_refund(self) -> bool {
        matches!(self, Op::Refund | Op::RefundStatus)
    }
}

/// The result of one simulated call: the outcome and the delay to ask the
/// host for (only ever `Some` for a charge with latency on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sim {
    pub scenario: &'static str,
    pub outcome: Outcome,
    pub delay_ms: Option<u32>,
}

/// The config value of `key`, the last one winning. Unlike the SDK's
/// `Settings::get` a blank value is kept, not taken as absent: `scenario=`
/// or `script=` is a config mistake the simulator answers with
/// `invalid_config`, as it always has.
pub(crate) fn get<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A bad config value: the simulator never charges, so refusing is safe.
pub(crate) fn invalid_config(message: String) -> Outcome {
    outcome::declined("invalid_config", message)
}

/// The whole simulator, minus the host calls.
pub fn simulate(op: Op, config: &[(String, String)], order_id: &str, attempt: u32) -> Sim {
    let fail = |scenario, outcome| Sim {
        scenario,
        outcome,
        delay_ms: None,
    };
    let scenario_raw = get(config, "scenario").unwrap_or("NORMAL");
    let Some(scenario) = Scenario::parse(scenario_raw) else {
        return fail(
            "invalid",
            invalid_config(format!("unknown scenario {scenario_raw:?}")),
        );
    };
    let latency_on = match get(config, "latency")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("on") | Some("true") => true,
        Some("off") | Some("false") => false,
        Some(other) => {
            return fail(
                scenario.name(),
                invalid_config(format!("latency must be on or off, not {other:?}")),
            )
        }
    };
    let seed = get(config, "seed").unwrap_or("");
    let hash = call_hash(order_id, attempt, seed);

    let Some(profile) = scenario.profile() else {
        let key = op.script_key();
        let script = get(config, key).unwrap_or("succeeded");
        let outcome = match script_entry(key, script, attempt) {
            Ok(kind) => outcome_of(kind, hash),
            Err(outcome) => outcome,
        };
        return fail(scenario.name(), refund_reference(op, outcome));
    };

    let p = plan(&profile, hash);
    if op.is_status() {
        return fail(
            scenario.name(),
            refund_reference(op, outcome_of(p.real, hash)),
        );
    }
    Sim {
        scenario: scenario.name(),
        outcome: refund_reference(
            op,
            outcome_of(if p.timed_out { Kind::Unknown } else { p.real }, hash),
        ),
        delay_ms: latency_on.then_some(p.latency_ms),
    }
}
