//! Retry policy: exponential backoff with "equal jitter".
//!
//! For retry `n` (= `context.attempt`, 1-based):
//! `h = min(cap, base * 2^(n-1))`, `delay = h/2 + random % (h/2 + 1)` ms,
//! so the delay is uniform in `[h/2, h]`. After `max-retries` retries the
//! policy gives up.
//!
//! Config keys (all optional): `base-ms` (default 2000), `cap-ms` (default
//! 60000), `max-retries` (default 5). A value that does not parse as an
//! unsigned integer, or a `base-ms`/`cap-ms` of 0, falls back to its default:
//! this world has no log import, and giving up on a customer's payment
//! because of an operator typo would be worse than retrying with defaults.
//! All arithmetic saturates, so huge attempts or bases cannot overflow.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "policy",
    path: "../../wit/retry-policy",
});

pub const DEFAULT_BASE_MS: u64 = 2_000;
pub const DEFAULT_CAP_MS: u64 = 60_000;
pub const DEFAULT_MAX_RETRIES: u32 = 5;

/// Effective settings after applying defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub max_retries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            base_ms: DEFAULT_BASE_MS,
            cap_ms: DEFAULT_CAP_MS,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// Reads the slot config; unknown keys are ignored, bad values use defaults.
pub fn settings(config: &[(String, String)]) -> Settings {
    let mut s = Settings::default();
    for (key, value) in config {
        let value = value.trim();
        match key.as_str() {
            "base-ms" => {
                if let Some(v) = value.parse::<u64>().ok().filter(|v| *v > 0) {
                    s.base_ms = v;
                }
            }
            "cap-ms" => {
                if let Some(v) = value.parse::<u64>().ok().filter(|v| *v > 0) {
                    s.cap_ms = v;
                }
            }
            "max-retries" => {
                if let Ok(v) = value.parse::<u32>() {
                    s.max_retries = v;
                }
            }
            _ => {}
        }
    }
    s
}

/// Backoff ceiling `min(cap, base * 2^(n-1))` for retry `n` (n >= 1).
pub fn ceiling(s: &Settings, n: u32) -> u64 {
    let exp = n.saturating_sub(1);
    let factor = 1u64.checked_shl(exp).unwrap_or(u64::MAX);
    s.base_ms.saturating_mul(factor).min(s.cap_ms)
}

/// Delay in ms for retry `n`, or the give-up reason.
pub fn decide(s: &Settings, attempt: u32, random: u64) -> Result<u64, String> {
    // The host reports at least one call before asking; treat 0 as 1.
    let n = attempt.max(1);
    if n > s.max_retries {
        return Err(format!("max retries ({}) exhausted", s.max_retries));
    }
    let h = ceiling(s, n);
    let half = h / 2;
    // half + 1 cannot overflow: half <= u64::MAX / 2.
    Ok(half + random % (half + 1))
}

struct Policy;

impl Guest for Policy {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn decide(config: Vec<(String, String)>, context: RetryContext) -> Decision {
        match decide(&settings(&config), context.attempt, context.random) {
            Ok(ms) => Decision::RetryAfter(ms),
            Err(reason) => Decision::GiveUp(reason),
        }
    }
}

export!(Policy);

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
    fn defaults_random_zero_gives_half_ceiling() {
        let s = Settings::default();
        let got: Vec<_> = (1..=5).map(|n| decide(&s, n, 0).unwrap()).collect();
        assert_eq!(got, vec![1_000, 2_000, 4_000, 8_000, 16_000]);
    }

    #[test]
    fn defaults_random_max() {
        let s = Settings::default();
        let got: Vec<_> = (1..=5).map(|n| decide(&s, n, u64::MAX).unwrap()).collect();
        assert_eq!(
            got,
            vec![
                1_000 + u64::MAX % 1_001,
                2_000 + u64::MAX % 2_001,
                4_000 + u64::MAX % 4_001,
                8_000 + u64::MAX % 8_001,
                16_000 + u64::MAX % 16_001,
            ]
        );
        assert_eq!(got, vec![1_015, 2_603, 6_498, 9_779, 19_488]);
    }

    #[test]
    fn delay_stays_within_half_and_full_ceiling() {
        let s = Settings::default();
        for n in 1..=5 {
            let h = ceiling(&s, n);
            for r in [0, 1, 7, 999, 1_000, 1_001, 123_456_789, u64::MAX] {
                let d = decide(&s, n, r).unwrap();
                assert!(d >= h / 2 && d <= h, "n={n} r={r} d={d} h={h}");
            }
        }
    }

    #[test]
    fn gives_up_after_max() {
        let s = Settings::default();
        assert_eq!(decide(&s, 6, 0), Err("max retries (5) exhausted".into()));
        assert_eq!(
            decide(&s, u32::MAX, u64::MAX),
            Err("max retries (5) exhausted".into())
        );
    }

    #[test]
    fn cap_applies_and_huge_values_do_not_overflow() {
        let s = Settings {
            base_ms: u64::MAX,
            cap_ms: u64::MAX,
            max_retries: u32::MAX,
        };
        assert_eq!(ceiling(&s, 1), u64::MAX);
        assert_eq!(ceiling(&s, 64), u64::MAX);
        assert_eq!(ceiling(&s, u32::MAX), u64::MAX);
        let d = decide(&s, u32::MAX, u64::MAX).unwrap();
        assert!(d >= u64::MAX / 2);
        let s = Settings {
            base_ms: 2_000,
            cap_ms: 60_000,
            max_retries: 100,
        };
        assert_eq!(ceiling(&s, 6), 60_000);
        assert_eq!(ceiling(&s, 100), 60_000);
        assert_eq!(decide(&s, 100, 0), Ok(30_000));
    }

    #[test]
    fn config_parsing_and_fallbacks() {
        let s = settings(&cfg(&[
            ("base-ms", "100"),
            ("cap-ms", "1000"),
            ("max-retries", "2"),
        ]));
        assert_eq!(
            s,
            Settings {
                base_ms: 100,
                cap_ms: 1_000,
                max_retries: 2
            }
        );
        assert_eq!(decide(&s, 1, 0), Ok(50));
        assert_eq!(decide(&s, 3, 0), Err("max retries (2) exhausted".into()));
        let bad = settings(&cfg(&[
            ("base-ms", "abc"),
            ("cap-ms", "0"),
            ("max-retries", "-1"),
        ]));
        assert_eq!(bad, Settings::default());
        let zero = settings(&cfg(&[("max-retries", "0")]));
        assert_eq!(decide(&zero, 1, 0), Err("max retries (0) exhausted".into()));
    }

    #[test]
    fn attempt_zero_is_treated_as_first_retry() {
        assert_eq!(decide(&Settings::default(), 0, 0), Ok(1_000));
    }
}

/// Runs the fixtures the host harness runs, against the pure logic.
#[cfg(test)]
mod fixture_tests {
    use super::*;
    use serde_json::{json, Value};

    use paynode_guest::fixtures::{cases, matches, Case};

    #[test]
    fn fixtures_hold() {
        for Case { file, case, config } in cases(env!("CARGO_MANIFEST_DIR")) {
            assert_eq!(case["call"], "decide");
            let input = &case["input"];
            let got = match decide(
                &settings(&config),
                input["attempt"].as_u64().unwrap() as u32,
                input["random"].as_u64().unwrap(),
            ) {
                Ok(ms) => json!({ "retryAfter": ms }),
                Err(reason) => json!({ "giveUp": reason }),
            };
            assert!(
                matches(&case["expect"], &got),
                "{file}: {}: got {got}",
                case["name"]
            );
        }
    }
}
