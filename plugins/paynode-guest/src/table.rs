//! A declarative table from an HTTP status (and the PSP's error codes) to
//! an outcome. Rules are tried in order; a status no rule names is
//! `unknown` (the Hyperswitch lesson: an answer the adapter does not
//! understand must never become a refusal or a retry that could charge
//! twice).

use core::ops::RangeInclusive;

use crate::{outcome, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Declined,
    Transient,
    Unknown,
}

pub struct Rule {
    pub statuses: RangeInclusive<u16>,
    /// The rule applies only when one of the answer's codes is listed
    /// (empty: any answer with a status in range).
    pub codes: &'static [&'static str],
    pub verdict: Verdict,
    /// Failure code when the answer carries none (default `http_<status>`).
    pub default_code: Option<&'static str>,
}

impl Rule {
    pub const fn new(statuses: RangeInclusive<u16>, verdict: Verdict) -> Rule {
        Rule {
            statuses,
            codes: &[],
            verdict,
            default_code: None,
        }
    }

    pub const fn codes(mut self, codes: &'static [&'static str]) -> Rule {
        self.codes = codes;
        self
    }

    pub const fn default_code(mut self, code: &'static str) -> Rule {
        self.default_code = Some(code);
        self
    }

    /// The outcome this rule gives an answer with `code` and `message`.
    pub fn outcome(&self, status: u16, code: Option<&str>, message: String) -> Outcome {
        let code = code
            .map(str::to_string)
            .or(self.default_code.map(str::to_string))
            .unwrap_or_else(|| format!("http_{status}"));
        match self.verdict {
            Verdict::Declined => outcome::declined(code, message),
            Verdict::Transient => outcome::transient(code, message),
            Verdict::Unknown => outcome::unknown(message),
        }
    }
}

pub struct Table(pub &'static [Rule]);

impl Table {
    /// The first rule matching the status and one of `codes`.
    pub fn rule(&self, status: u16, codes: &[&str]) -> Option<&Rule> {
        self.0.iter().find(|rule| {
            rule.statuses.contains(&status)
                && (rule.codes.is_empty() || codes.iter().any(|c| rule.codes.contains(c)))
        })
    }

    /// The outcome of an answer with `status`: by the matching rule, else
    /// `unknown`. `code_for` picks the failure code once the verdict is known.
    pub fn outcome(
        &self,
        status: u16,
        codes: &[&str],
        code_for: impl FnOnce(Verdict) -> Option<String>,
        message: String,
    ) -> Outcome {
        let Some(rule) = self.rule(status, codes) else {
            // The request was sent and the answer says nothing certain.
            return outcome::unknown(format!("unexpected HTTP {status} from PSP"));
        };
        rule.outcome(status, code_for(rule.verdict).as_deref(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: Table = Table(&[
        Rule::new(429..=429, Verdict::Transient).default_code("rate_limited"),
        Rule::new(400..=499, Verdict::Transient).codes(&["try_again"]),
        Rule::new(400..=499, Verdict::Declined),
    ]);

    #[test]
    fn rules_apply_in_order_and_the_rest_is_unknown() {
        let code = |_| None;
        let out = |status, codes: &[&str]| TABLE.outcome(status, codes, code, "m".into());
        assert_eq!(out(429, &[]), outcome::transient("rate_limited", "m"));
        assert_eq!(
            out(409, &["try_again"]),
            outcome::transient("http_409", "m")
        );
        assert_eq!(
            out(402, &["card_declined"]),
            outcome::declined("http_402", "m")
        );
        assert!(matches!(out(500, &[]), Outcome::Unknown(_)));
        assert!(matches!(out(302, &[]), Outcome::Unknown(_)));
    }
}
