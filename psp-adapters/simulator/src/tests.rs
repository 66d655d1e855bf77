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
    let refs: std::collections::HashSet<_> = (1..50).map(|n| call_hash("po-1", n, "")).collect();
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
