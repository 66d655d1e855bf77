//! Runs the fixtures the host harness runs, against the pure logic.

use super::*;
use paynode_guest::v2::{constant_time_eq, hex_lower, NotificationKind};
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
        let (op, id) = match case["call"].as_str().unwrap() {
            "charge" => (Op::Charge, "paymentOrderId"),
            "status" => (Op::Status, "paymentOrderId"),
            "refund" => (Op::Refund, "refundId"),
            "refund-status" => (Op::RefundStatus, "refundId"),
            // Needs the host's HMAC import: the harness runs these.
            "parse-notification" => continue,
            other => panic!("{file}: bad call {other}"),
        };
        assert!(case["http"].as_array().unwrap().is_empty());
        let input = &case["input"];
        let sim = simulate(
            op,
            &config,
            input[id].as_str().unwrap(),
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

#[test]
fn notification_bodies_parse() {
    let n = parse_body(b"id=evt_1&type=refund.succeeded&key=rk-1&reference=simrf_1").unwrap();
    assert_eq!(n.event_id, "evt_1");
    assert_eq!(n.kind, NotificationKind::RefundSucceeded);
    assert_eq!(n.idempotency_key, "rk-1");
    assert_eq!(n.psp_reference, "simrf_1");
    assert!(parse_body(b"id=evt_1&type=refund.succeeded").is_err());
    assert!(parse_body(b"id=evt_1&type=nope&key=k").is_err());
    assert!(parse_body(b"garbage").is_err());
    assert_eq!(hex_lower(&[0x00, 0xab, 0xff]), "00abff");
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}
