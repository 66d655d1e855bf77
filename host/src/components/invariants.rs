//! Host invariants on component output. A component is never trusted: its
//! output is checked here before anything is written or produced.

use std::collections::{BTreeMap, BTreeSet};

use super::bindings::adapter::paynode::psp_adapter::types::Outcome;
use super::bindings::policy::paynode::retry_policy::types::Decision;
use super::bindings::rules::paynode::posting_rules::types::{JournalEntry, RuleError, Side};
use super::PluginError;

/// Most postings one journal entry may carry.
pub const MAX_POSTINGS_PER_ENTRY: usize = 64;
/// Most entries one posting-rules call may return.
pub const MAX_ENTRIES_PER_ORDER: usize = 16;

/// Text a guest returns ends up in Postgres `text`/`jsonb` columns, which
/// refuse NUL (Rust strings are valid UTF-8, so NUL is the one character
/// left that Postgres refuses): refused here as the component's invalid
/// output, not left to fail the stage's transaction as a database error.
pub fn check_text(what: &str, text: &str) -> Result<(), PluginError> {
    if text.contains('\0') {
        return Err(PluginError::InvalidOutput(format!(
            "{what} contains NUL, which PostgreSQL text cannot store"
        )));
    }
    Ok(())
}

pub fn check_outcome(outcome: &Outcome, max_bytes: usize) -> Result<(), PluginError> {
    match outcome {
        Outcome::Succeeded(reference) => check_text("PSP reference", reference)?,
        Outcome::Declined(f) | Outcome::Transient(f) => {
            check_text("failure code", &f.code)?;
            check_text("failure message", &f.message)?;
        }
        Outcome::Unknown(reason) => check_text("unknown reason", reason)?,
    }
    let size = match outcome {
        Outcome::Succeeded(reference) => reference.len(),
        Outcome::Declined(f) | Outcome::Transient(f) => f.code.len() + f.message.len(),
        Outcome::Unknown(reason) => reason.len(),
    };
    if size > max_bytes.min(8 * 1024) {
        return Err(PluginError::InvalidOutput(format!(
            "outcome of {size} bytes is too large"
        )));
    }
    if let Outcome::Succeeded(reference) = outcome {
        if reference.is_empty() {
            return Err(PluginError::InvalidOutput(
                "succeeded without a PSP reference".into(),
            ));
        }
    }
    Ok(())
}

/// Most notifications one webhook call may yield.
pub const MAX_NOTIFICATIONS: usize = 32;

/// Notifications name records the host looks up: bounded in number and
/// size, no NUL, and an event id and idempotency key present.
pub fn check_notifications(
    notifications: &[super::runtime::Notification],
    max_bytes: usize,
) -> Result<(), PluginError> {
    if notifications.len() > MAX_NOTIFICATIONS {
        return Err(PluginError::InvalidOutput(format!(
            "{} notifications in one call (at most {MAX_NOTIFICATIONS})",
            notifications.len()
        )));
    }
    let mut size = 0usize;
    for n in notifications {
        for (what, text) in [
            ("event id", &n.event_id),
            ("idempotency key", &n.idempotency_key),
            ("PSP reference", &n.psp_reference),
            ("message", &n.message),
        ] {
            check_text(what, text)?;
            size = size.saturating_add(text.len());
        }
        if n.event_id.is_empty() || n.event_id.len() > 255 || n.idempotency_key.is_empty() {
            return Err(PluginError::InvalidOutput(
                "a notification needs an event id (at most 255 bytes) and an idempotency key"
                    .into(),
            ));
        }
    }
    if size > max_bytes.min(64 * 1024) {
        return Err(PluginError::InvalidOutput(format!(
            "notifications of {size} bytes are too large"
        )));
    }
    Ok(())
}

/// A retry policy's give-up reason becomes the order's failure reason.
pub fn check_decision(decision: &Decision) -> Result<(), PluginError> {
    match decision {
        Decision::GiveUp(reason) => check_text("give-up reason", reason),
        Decision::RetryAfter(_) => Ok(()),
    }
}

/// A posting rule's error is recorded with the order it refused.
pub fn check_rule_error(error: &RuleError) -> Result<(), PluginError> {
    check_text("rule error code", &error.code)?;
    check_text("rule error message", &error.message)
}

/// A component's self-reported name and version are stored with it.
pub fn check_info(name: &str, version: &str) -> Result<(), PluginError> {
    check_text("component name", name)?;
    check_text("component version", version)
}

pub fn check_output_size(entries: &[JournalEntry], max_bytes: usize) -> Result<(), PluginError> {
    if entries.len() > MAX_ENTRIES_PER_ORDER {
        return Err(PluginError::InvalidOutput(format!(
            "{} journal entries (max {MAX_ENTRIES_PER_ORDER})",
            entries.len()
        )));
    }
    let mut size = 0usize;
    for entry in entries {
        if entry.postings.len() > MAX_POSTINGS_PER_ENTRY {
            return Err(PluginError::InvalidOutput(format!(
                "entry {} has {} postings (max {MAX_POSTINGS_PER_ENTRY})",
                entry.kind,
                entry.postings.len()
            )));
        }
        size += entry.kind.len() + entry.key.len();
        size += entry
            .postings
            .iter()
            .map(|p| p.account.len() + p.amount.currency.len() + 16)
            .sum::<usize>();
    }
    if size > max_bytes {
        return Err(PluginError::InvalidOutput(format!(
            "output of {size} bytes exceeds {max_bytes}"
        )));
    }
    Ok(())
}

/// Whose accounts an order may touch, and in which currency.
pub struct PostingScope<'a> {
    pub seller_id: &'a str,
    pub currency: &'a str,
}

/// Balanced per entry, ≥ 2 postings, positive amounts, the order's currency,
/// well-formed `TYPE.OWNER.CURRENCY` codes owned by `GLOBAL` or this seller,
/// no account twice in one entry, unique (kind, key) pairs.
pub fn check_journals(
    entries: &[JournalEntry],
    scope: &PostingScope<'_>,
) -> Result<(), PluginError> {
    let invalid = |msg: String| Err(PluginError::InvalidOutput(msg));
    let mut keys = BTreeSet::new();
    for entry in entries {
        if !is_code_part(&entry.kind) || (!entry.key.is_empty() && !is_code_part(&entry.key)) {
            return invalid(format!(
                "bad journal kind/key {:?}/{:?}",
                entry.kind, entry.key
            ));
        }
        if !keys.insert((entry.kind.as_str(), entry.key.as_str())) {
            return invalid(format!(
                "journal {}:{} appears twice",
                entry.kind, entry.key
            ));
        }
        if entry.postings.len() < 2 {
            return invalid(format!("journal {} has fewer than 2 postings", entry.kind));
        }
        let mut accounts = BTreeSet::new();
        let mut sums: BTreeMap<&str, (i128, i128)> = BTreeMap::new();
        for posting in &entry.postings {
            if posting.amount.quantity <= 0 {
                return invalid(format!(
                    "journal {}: non-positive amount on {}",
                    entry.kind, posting.account
                ));
            }
            if posting.amount.currency != scope.currency {
                return invalid(format!(
                    "journal {}: currency {} differs from the order's {}",
                    entry.kind, posting.amount.currency, scope.currency
                ));
            }
            check_account(&posting.account, scope)?;
            if !accounts.insert(posting.account.as_str()) {
                return invalid(format!(
                    "journal {}: account {} posted twice",
                    entry.kind, posting.account
                ));
            }
            let sum = sums.entry(posting.amount.currency.as_str()).or_default();
            match posting.side {
                Side::Debit => sum.0 += i128::from(posting.amount.quantity),
                Side::Credit => sum.1 += i128::from(posting.amount.quantity),
            }
        }
        for (currency, (debits, credits)) in sums {
            if debits != credits {
                return invalid(format!(
                    "journal {} unbalanced in {currency}: debits {debits} != credits {credits}",
                    entry.kind
                ));
            }
        }
    }
    Ok(())
}

fn check_account(code: &str, scope: &PostingScope<'_>) -> Result<(), PluginError> {
    let parts: Vec<&str> = code.split('.').collect();
    let [kind, owner, currency] = parts.as_slice() else {
        return Err(PluginError::InvalidOutput(format!(
            "account {code:?} is not TYPE.OWNER.CURRENCY"
        )));
    };
    if !is_code_part(kind) || kind.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(PluginError::InvalidOutput(format!(
            "account {code:?}: bad type"
        )));
    }
    if *currency != scope.currency {
        return Err(PluginError::InvalidOutput(format!(
            "account {code:?}: not in {}",
            scope.currency
        )));
    }
    if *owner != "GLOBAL" && *owner != scope.seller_id {
        return Err(PluginError::InvalidOutput(format!(
            "account {code:?} belongs to neither the platform nor seller {}",
            scope.seller_id
        )));
    }
    Ok(())
}

fn is_code_part(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::bindings::rules::paynode::posting_rules::types::{Money, Posting};

    fn posting(account: &str, side: Side, quantity: i64) -> Posting {
        Posting {
            account: account.into(),
            side,
            amount: Money {
                quantity,
                currency: "EUR".into(),
            },
        }
    }

    fn entry(postings: Vec<Posting>) -> JournalEntry {
        JournalEntry {
            kind: "AUTH".into(),
            key: String::new(),
            postings,
        }
    }

    const SCOPE: PostingScope<'static> = PostingScope {
        seller_id: "seller-1",
        currency: "EUR",
    };

    #[test]
    fn balanced_entry_passes() {
        let e = entry(vec![
            posting("PSP_RECEIVABLES.GLOBAL.EUR", Side::Debit, 100),
            posting("MERCHANT_ACCOUNT.seller-1.EUR", Side::Credit, 100),
        ]);
        check_journals(&[e], &SCOPE).unwrap();
    }

    #[test]
    fn nul_in_any_guest_text_is_invalid_output() {
        use crate::components::bindings::adapter::paynode::psp_adapter::types::Failure;
        let failure = |code: &str, message: &str| Failure {
            code: code.into(),
            message: message.into(),
        };
        let outcomes = [
            Outcome::Succeeded("pi_\0".into()),
            Outcome::Declined(failure("card_declined\0", "no")),
            Outcome::Transient(failure("rate_limit", "try\0later")),
            Outcome::Unknown("\0".into()),
        ];
        for outcome in &outcomes {
            assert!(
                matches!(
                    check_outcome(outcome, 1024),
                    Err(PluginError::InvalidOutput(_))
                ),
                "accepted {outcome:?}"
            );
        }
        check_outcome(&Outcome::Succeeded("pi_1".into()), 1024).unwrap();
        assert!(matches!(
            check_decision(&Decision::GiveUp("gave\0up".into())),
            Err(PluginError::InvalidOutput(_))
        ));
        check_decision(&Decision::GiveUp("gave up".into())).unwrap();
        let error = RuleError {
            code: "X".into(),
            message: "bad\0".into(),
        };
        assert!(matches!(
            check_rule_error(&error),
            Err(PluginError::InvalidOutput(_))
        ));
        assert!(check_info("name\0", "1.0").is_err());
        let nul_key = JournalEntry {
            key: "k\0".into(),
            ..entry(vec![
                posting("A.GLOBAL.EUR", Side::Debit, 100),
                posting("B.GLOBAL.EUR", Side::Credit, 100),
            ])
        };
        assert!(matches!(
            check_journals(&[nul_key], &SCOPE),
            Err(PluginError::InvalidOutput(_))
        ));
    }

    #[test]
    fn violations_are_rejected() {
        let cases = vec![
            entry(vec![
                posting("A.GLOBAL.EUR", Side::Debit, 100),
                posting("B.GLOBAL.EUR", Side::Credit, 99),
            ]),
            entry(vec![posting("A.GLOBAL.EUR", Side::Debit, 100)]),
            entry(vec![
                posting("A.GLOBAL.EUR", Side::Debit, 0),
                posting("B.GLOBAL.EUR", Side::Credit, 0),
            ]),
            entry(vec![
                posting("A.GLOBAL.EUR", Side::Debit, 100),
                posting("MERCHANT_ACCOUNT.seller-2.EUR", Side::Credit, 100),
            ]),
            entry(vec![
                posting("A.GLOBAL.USD", Side::Debit, 100),
                posting("B.GLOBAL.USD", Side::Credit, 100),
            ]),
            entry(vec![
                posting("A.GLOBAL", Side::Debit, 100),
                posting("B.GLOBAL.EUR", Side::Credit, 100),
            ]),
            entry(vec![
                posting("A.GLOBAL.EUR", Side::Debit, 100),
                posting("A.GLOBAL.EUR", Side::Credit, 100),
            ]),
        ];
        for case in cases {
            assert!(
                matches!(
                    check_journals(std::slice::from_ref(&case), &SCOPE),
                    Err(PluginError::InvalidOutput(_))
                ),
                "accepted {case:?}"
            );
        }
    }
}
