//! Ledger facts that need no I/O: journal ids and comparable posting lines.

use std::collections::BTreeSet;

use super::events::RecordedJournal;

/// One line per posting (`journal account side amount currency`), sorted:
/// two journal sets are equal when their lines are.
pub fn posting_lines(journals: &[RecordedJournal]) -> BTreeSet<String> {
    journals
        .iter()
        .flat_map(|j| {
            j.postings.iter().map(move |p| {
                format!(
                    "{} {} {} {} {}",
                    j.journal_id, p.account, p.side, p.amount_minor, j.currency
                )
            })
        })
        .collect()
}

/// Deterministic and unique per (order, kind, key).
pub fn journal_id(order_id: uuid::Uuid, kind: &str, key: &str) -> String {
    if key.is_empty() {
        format!("{kind}:{order_id}")
    } else {
        format!("{kind}:{order_id}:{key}")
    }
}
