//! PSP simulator as a PSP adapter component: the v1 reference.
//!
//! Frozen copy of `psp-adapters/simulator` as it was when psp-adapter 2.0.0
//! was introduced, built against the frozen v1 WIT (`wit/psp-adapter`). Its
//! component is a test fixture: the host must keep loading and charging
//! with v1 components, and refuse their refunds clearly. Do not change it.
//!
//! The outcome of a call is a pure function of (payment-order-id, attempt,
//! config): FNV-1a 64 over the order id, the attempt and the optional config
//! `seed` gives a hash; splitmix64 seeded with it gives the draws, always in
//! this order: timeout, latency bucket, latency within the bucket, outcome.
//!
//! Config keys:
//! - `scenario`: `NORMAL` (default) | `PEAK` | `DEGRADED` | `BEST_PSP_EVER` |
//!   `scripted`, case-insensitive (`-` and `_` are interchangeable).
//! - `latency`: `on` (default) | `off`. Off never calls the host's `delay`.
//! - `seed`: optional string mixed into the hash.
//! - `script` (scripted only): comma list of `succeeded | declined |
//!   transient | unknown`, the outcome of attempt 1, 2, ...; the last entry
//!   repeats. Default `succeeded`.
//! - `status-script` (scripted only): the same for `status`, indexed by the
//!   request's attempt. Default `succeeded`.
//!
//! `status` never delays. For the random scenarios it answers what the PSP
//! "really" did for that (order, attempt): the same draws without the
//! timeout. A bad config value answers `declined(invalid_config)`: the
//! simulator never charges, so refusing is always safe.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "adapter",
    path: "../../wit/psp-adapter",
    additional_derives: [PartialEq, Eq],
});

use paynode::psp_adapter::http;
use paynode::psp_adapter::log::{self, Level};
use paynode::psp_adapter::types::Failure;

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over the given byte strings, in order.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    h
}

/// The hash a call's draws derive from.
pub fn call_hash(order_id: &str, attempt: u32, seed: &str) -> u64 {
    fnv1a64(&[
        order_id.as_bytes(),
        &[0],
        &attempt.to_le_bytes(),
        &[0],
        seed.as_bytes(),
    ])
}

/// splitmix64 stream.
pub struct Draws(u64);

impl Draws {
    pub fn new(seed: u64) -> Self {
        Draws(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..100
    pub fn percent(&mut self) -> u32 {
        (self.next_u64() % 100) as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Normal,
    Peak,
    Degraded,
    BestPspEver,
    Scripted,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "normal" => Some(Scenario::Normal),
            "peak" => Some(Scenario::Peak),
            "degraded" => Some(Scenario::Degraded),
            "best_psp_ever" => Some(Scenario::BestPspEver),
            "scripted" => Some(Scenario::Scripted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Normal => "NORMAL",
            Scenario::Peak => "PEAK",
            Scenario::Degraded => "DEGRADED",
            Scenario::BestPspEver => "BEST_PSP_EVER",
            Scenario::Scripted => "scripted",
        }
    }

    /// Profile of a random scenario; `None` for `Scripted`.
    pub fn profile(self) -> Option<Profile> {
        match self {
            Scenario::Normal => Some(Profile {
                timeout_pct: 0,
                buckets: &[(100, 50, 150)],
                success_pct: 100,
                transient_pct: 0,
            }),
            Scenario::Peak => Some(Profile {
                timeout_pct: 25,
                buckets: &[(30, 250, 500), (50, 501, 1500), (20, 1501, 2500)],
                success_pct: 50,
                transient_pct: 45,
            }),
            Scenario::Degraded => Some(Profile {
                timeout_pct: 30,
                buckets: &[(20, 2000, 2200), (20, 2201, 2600), (60, 2601, 2990)],
                success_pct: 50,
                transient_pct: 40,
            }),
            Scenario::BestPspEver => Some(Profile {
                timeout_pct: 0,
                buckets: &[(100, 1, 2)],
                success_pct: 100,
                transient_pct: 0,
            }),
            Scenario::Scripted => None,
        }
    }
}

/// A random scenario: timeout probability, latency buckets (probability in
/// percent, inclusive range in ms; probabilities add up to 100) and the
/// success / transient split in percent (declines are the rest).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub timeout_pct: u32,
    pub buckets: &'static [(u32, u32, u32)],
    pub success_pct: u32,
    pub transient_pct: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Succeeded,
    Declined,
    Transient,
    Unknown,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "succeeded" => Some(Kind::Succeeded),
            "declined" => Some(Kind::Declined),
            "transient" => Some(Kind::Transient),
            "unknown" => Some(Kind::Unknown),
            _ => None,
        }
    }
}

/// What a random scenario draws for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub timed_out: bool,
    pub latency_ms: u32,
    /// What the PSP really did, ignoring the timeout.
    pub real: Kind,
}

pub fn plan(profile: &Profile, hash: u64) -> Plan {
    let mut d = Draws::new(hash);
    let timed_out = d.percent() < profile.timeout_pct;
    let bucket_draw = d.percent();
    let within = d.next_u64();
    let outcome_draw = d.percent();

    let mut acc = 0;
    let mut bucket = profile.buckets[profile.buckets.len() - 1];
    for b in profile.buckets {
        acc += b.0;
        if bucket_draw < acc {
            bucket = *b;
            break;
        }
    }
    let (_, lo, hi) = bucket;
    let span = u64::from(hi - lo) + 1;
    let latency_ms = lo + (within % span) as u32;

    let real = if outcome_draw < profile.success_pct {
        Kind::Succeeded
    } else if outcome_draw < profile.success_pct + profile.transient_pct {
        Kind::Transient
    } else {
        Kind::Declined
    };
    Plan {
        timed_out,
        latency_ms,
        real,
    }
}

pub fn outcome_of(kind: Kind, hash: u64) -> Outcome {
    match kind {
        Kind::Succeeded => Outcome::Succeeded(format!("sim_{hash:016x}")),
        Kind::Declined => Outcome::Declined(Failure {
            code: "card_declined".into(),
            message: "simulated decline: the card was declined".into(),
        }),
        Kind::Transient => Outcome::Transient(Failure {
            code: "processing_error".into(),
            message: "simulated transient PSP processing error".into(),
        }),
        Kind::Unknown => Outcome::Unknown("simulated PSP timeout".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Charge,
    Status,
}

/// The result of one simulated call: the outcome and the delay to ask the
/// host for (only ever `Some` for a charge with latency on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sim {
    pub scenario: &'static str,
    pub outcome: Outcome,
    pub delay_ms: Option<u32>,
}

fn get<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn invalid_config(message: String) -> Outcome {
    Outcome::Declined(Failure {
        code: "invalid_config".into(),
        message,
    })
}

/// Entry `attempt - 1` of a comma list (the last entry repeats).
fn script_entry(key: &str, script: &str, attempt: u32) -> Result<Kind, Outcome> {
    let entries: Vec<&str> = script
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(invalid_config(format!("config `{key}` is empty")));
    }
    let idx = (attempt.max(1) - 1) as usize;
    let entry = entries[idx.min(entries.len() - 1)];
    Kind::parse(entry).ok_or_else(|| {
        invalid_config(format!(
            "config `{key}`: unknown entry {entry:?} (expected succeeded, declined, transient or unknown)"
        ))
    })
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
        let (key, default) = match op {
            Op::Charge => ("script", "succeeded"),
            Op::Status => ("status-script", "succeeded"),
        };
        let script = get(config, key).unwrap_or(default);
        let outcome = match script_entry(key, script, attempt) {
            Ok(kind) => outcome_of(kind, hash),
            Err(outcome) => outcome,
        };
        return fail(scenario.name(), outcome);
    };

    let p = plan(&profile, hash);
    match op {
        Op::Charge => Sim {
            scenario: scenario.name(),
            outcome: outcome_of(if p.timed_out { Kind::Unknown } else { p.real }, hash),
            delay_ms: latency_on.then_some(p.latency_ms),
        },
        Op::Status => fail(scenario.name(), outcome_of(p.real, hash)),
    }
}

fn run(op: Op, config: &[(String, String)], request: &ChargeRequest) -> Outcome {
    let sim = simulate(op, config, &request.payment_order_id, request.attempt);
    if let Some(ms) = sim.delay_ms {
        http::delay(ms);
    }
    log::write(
        Level::Debug,
        &format!(
            "psp-simulator {op:?} order={} attempt={} scenario={} delay_ms={} -> {:?}",
            request.payment_order_id,
            request.attempt,
            sim.scenario,
            sim.delay_ms.unwrap_or(0),
            sim.outcome
        ),
    );
    sim.outcome
}

struct Simulator;

impl Guest for Simulator {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "psp-simulator".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Config, request: ChargeRequest) -> Outcome {
        run(Op::Charge, &config, &request)
    }

    fn status(config: Config, request: ChargeRequest) -> Outcome {
        run(Op::Status, &config, &request)
    }
}

export!(Simulator);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(&[b"foo", b"bar"]), fnv1a64(&[b"foobar"]));
    }

    #[test]
    fn splitmix_known_vector() {
        // Reference values of splitmix64 seeded with 0.
        let mut d = Draws::new(0);
        assert_eq!(d.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(d.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn deterministic_and_attempt_sensitive() {
        let c = cfg(&[("scenario", "PEAK")]);
        let a = simulate(Op::Charge, &c, "po-1", 1);
        assert_eq!(a, simulate(Op::Charge, &c, "po-1", 1));
        let refs: std::collections::HashSet<_> =
            (1..50).map(|n| call_hash("po-1", n, "")).collect();
        assert_eq!(refs.len(), 49);
        assert_ne!(call_hash("po-1", 1, ""), call_hash("po-1", 1, "x"));
    }

    #[test]
    fn best_psp_ever_succeeds_fast() {
        let c = cfg(&[("scenario", "best_psp_ever")]);
        for n in 1..200 {
            let id = format!("po-{n}");
            let s = simulate(Op::Charge, &c, &id, 1);
            let want = format!("sim_{:016x}", call_hash(&id, 1, ""));
            assert_eq!(s.outcome, Outcome::Succeeded(want));
            let ms = s.delay_ms.unwrap();
            assert!((1..=2).contains(&ms));
        }
        let off = cfg(&[("scenario", "BEST_PSP_EVER"), ("latency", "off")]);
        assert_eq!(simulate(Op::Charge, &off, "po-1", 1).delay_ms, None);
    }

    #[test]
    fn normal_is_default_and_always_succeeds() {
        for n in 1..200 {
            let s = simulate(Op::Charge, &[], &format!("o{n}"), 1);
            assert!(matches!(s.outcome, Outcome::Succeeded(_)));
            let ms = s.delay_ms.unwrap();
            assert!((50..=150).contains(&ms));
            assert_eq!(s.scenario, "NORMAL");
        }
    }

    fn stats(scenario: &str, n: u32) -> (u32, u32, u32, u32, u32, u32) {
        let c = cfg(&[("scenario", scenario)]);
        let (mut ok, mut tr, mut de, mut un) = (0, 0, 0, 0);
        let (mut min, mut max) = (u32::MAX, 0);
        for i in 0..n {
            let s = simulate(Op::Charge, &c, &format!("order-{i}"), 1);
            match s.outcome {
                Outcome::Succeeded(_) => ok += 1,
                Outcome::Transient(_) => tr += 1,
                Outcome::Declined(_) => de += 1,
                Outcome::Unknown(_) => un += 1,
            }
            let ms = s.delay_ms.unwrap();
            min = min.min(ms);
            max = max.max(ms);
        }
        (ok, tr, de, un, min, max)
    }

    #[test]
    fn peak_distribution_roughly_matches() {
        let n = 20_000;
        let (ok, tr, de, un, min, max) = stats("PEAK", n);
        let pct = |x: u32| x * 100 / n;
        assert!((23..=27).contains(&pct(un)), "timeouts {}", pct(un));
        // 75% not timed out, split 50/45/5.
        assert!((35..=40).contains(&pct(ok)), "ok {}", pct(ok));
        assert!((31..=36).contains(&pct(tr)), "transient {}", pct(tr));
        assert!((2..=5).contains(&pct(de)), "declined {}", pct(de));
        assert!(min >= 250 && max <= 2500);
    }

    #[test]
    fn degraded_distribution_roughly_matches() {
        let n = 20_000;
        let (_, _, de, un, min, max) = stats("DEGRADED", n);
        let pct = |x: u32| x * 100 / n;
        assert!((28..=32).contains(&pct(un)), "timeouts {}", pct(un));
        assert!((5..=9).contains(&pct(de)), "declined {}", pct(de));
        assert!(min >= 2000 && max <= 2990);
    }

    #[test]
    fn status_reports_the_real_outcome_of_a_timeout() {
        let c = cfg(&[("scenario", "DEGRADED")]);
        let mut seen = 0;
        for i in 0..500 {
            let id = format!("order-{i}");
            let charge = simulate(Op::Charge, &c, &id, 1);
            let status = simulate(Op::Status, &c, &id, 1);
            assert_eq!(status.delay_ms, None);
            assert!(!matches!(status.outcome, Outcome::Unknown(_)));
            if matches!(charge.outcome, Outcome::Unknown(_)) {
                seen += 1;
            } else {
                assert_eq!(charge.outcome, status.outcome);
            }
        }
        assert!(seen > 100);
    }

    #[test]
    fn scripted_charge_and_status() {
        let c = cfg(&[
            ("scenario", "Scripted"),
            ("script", "transient, unknown,declined,succeeded"),
            ("status-script", "unknown,succeeded"),
        ]);
        let o = |op, n| simulate(op, &c, "po-1", n).outcome;
        assert!(matches!(o(Op::Charge, 1), Outcome::Transient(f) if f.code == "processing_error"));
        assert_eq!(
            o(Op::Charge, 2),
            Outcome::Unknown("simulated PSP timeout".into())
        );
        assert!(matches!(o(Op::Charge, 3), Outcome::Declined(f) if f.code == "card_declined"));
        assert_eq!(
            o(Op::Charge, 4),
            Outcome::Succeeded(format!("sim_{:016x}", call_hash("po-1", 4, "")))
        );
        assert!(matches!(o(Op::Charge, 9), Outcome::Succeeded(_)));
        assert_eq!(
            o(Op::Status, 1),
            Outcome::Unknown("simulated PSP timeout".into())
        );
        assert!(matches!(o(Op::Status, 2), Outcome::Succeeded(_)));
        assert!(matches!(o(Op::Status, 7), Outcome::Succeeded(_)));
        assert_eq!(simulate(Op::Charge, &c, "po-1", 1).delay_ms, None);
        // Defaults: both scripts succeed.
        let d = cfg(&[("scenario", "scripted")]);
        assert!(matches!(
            simulate(Op::Charge, &d, "x", 1).outcome,
            Outcome::Succeeded(_)
        ));
        assert!(matches!(
            simulate(Op::Status, &d, "x", 3).outcome,
            Outcome::Succeeded(_)
        ));
    }

    #[test]
    fn bad_config_is_declined_invalid_config() {
        for c in [
            cfg(&[("scenario", "chaos")]),
            cfg(&[("latency", "maybe")]),
            cfg(&[("scenario", "scripted"), ("script", "ok")]),
            cfg(&[("scenario", "scripted"), ("script", " , ")]),
        ] {
            let s = simulate(Op::Charge, &c, "po-1", 1);
            assert!(
                matches!(&s.outcome, Outcome::Declined(f) if f.code == "invalid_config"),
                "{c:?} -> {s:?}"
            );
        }
    }

    /// Prints the expected values used by fixtures (run with --nocapture).
    #[test]
    fn print_fixture_values() {
        for (id, n) in [("po-1", 1), ("po-1", 2), ("po-2", 1), ("po-3", 3)] {
            println!("hash({id},{n}) = sim_{:016x}", call_hash(id, n, ""));
        }
    }
}

/// Runs the fixtures the host harness runs, against the pure logic.
#[cfg(test)]
mod fixture_tests {
    use super::*;
    use serde_json::{json, Value};

    use paynode_guest::fixtures::{cases, matches, Case};

    fn outcome_json(o: &Outcome) -> Value {
        match o {
            Outcome::Succeeded(r) => json!({ "succeeded": r }),
            Outcome::Declined(f) => json!({ "declined": { "code": f.code, "message": f.message } }),
            Outcome::Transient(f) => {
                json!({ "transient": { "code": f.code, "message": f.message } })
            }
            Outcome::Unknown(r) => json!({ "unknown": r }),
        }
    }

    #[test]
    fn fixtures_hold() {
        for Case { file, case, config } in cases(env!("CARGO_MANIFEST_DIR")) {
            let op = match case["call"].as_str().unwrap() {
                "charge" => Op::Charge,
                "status" => Op::Status,
                other => panic!("{file}: bad call {other}"),
            };
            assert!(case["http"].as_array().unwrap().is_empty());
            let input = &case["input"];
            let sim = simulate(
                op,
                &config,
                input["paymentOrderId"].as_str().unwrap(),
                input["attempt"].as_u64().unwrap() as u32,
            );
            let got = outcome_json(&sim.outcome);
            assert!(
                matches(&case["expect"], &got),
                "{file}: {}: got {got}",
                case["name"]
            );
        }
    }
}
