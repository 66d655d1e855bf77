//! Between the posting-rules WIT and the ledger's journals: what a rule
//! sees of a finalized order, and its (checked) entries as the journals the
//! ledger stores. Used by the ledger stage, `replay` and shadow runs alike.

use super::bindings::rules::paynode::posting_rules::types as wit;
use crate::domain::events::{FinalStatus, OrderFinalized, RecordedJournal, RecordedPosting};
use crate::domain::ledger::journal_id;

/// What the posting rules see of a finalized order.
pub fn rule_input(finalized: &OrderFinalized) -> wit::FinalizedOrder {
    wit::FinalizedOrder {
        payment_order_id: finalized.order.payment_order_id.to_string(),
        payment_id: finalized.order.payment_id.to_string(),
        seller_id: finalized.order.seller_id.clone(),
        amount: wit::Money {
            quantity: finalized.order.amount.quantity,
            currency: finalized.order.amount.currency.clone(),
        },
        status: match finalized.status {
            FinalStatus::Succeeded => wit::OrderStatus::Succeeded,
            FinalStatus::Failed => wit::OrderStatus::Failed,
        },
        psp_reference: finalized.psp_reference.clone().unwrap_or_default(),
    }
}

/// The rule's entries (already checked) as the journals the ledger stores.
pub fn recorded_journals(
    order_id: uuid::Uuid,
    currency: &str,
    entries: Vec<wit::JournalEntry>,
) -> Vec<RecordedJournal> {
    entries
        .into_iter()
        .map(|entry| RecordedJournal {
            journal_id: journal_id(order_id, &entry.kind, &entry.key),
            kind: entry.kind,
            currency: currency.to_string(),
            postings: entry
                .postings
                .into_iter()
                .map(|p| RecordedPosting {
                    account: p.account,
                    side: match p.side {
                        wit::Side::Debit => "debit".into(),
                        wit::Side::Credit => "credit".into(),
                    },
                    amount_minor: p.amount.quantity,
                })
                .collect(),
        })
        .collect()
}
