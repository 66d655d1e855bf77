//! Hostile posting rules: one balanced entry with 200000 postings (1 minor unit each, alternating debit/credit on distinct platform accounts).

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "rules",
    path: "../../../wit/posting-rules",
});

use paynode::posting_rules::types::{Money, Posting, Side};

fn posting(account: String, side: Side, quantity: i64, currency: &str) -> Posting {
    Posting {
        account,
        side,
        amount: Money {
            quantity,
            currency: currency.into(),
        },
    }
}

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-oversized".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn post(_config: Config, order: FinalizedOrder) -> Result<Vec<JournalEntry>, RuleError> {
        let c = order.amount.currency.as_str();
        let a = order.amount.quantity;
        let _ = a;
        let postings = (0..200_000u32)
            .map(|i| {
                let side = if i % 2 == 0 {
                    Side::Debit
                } else {
                    Side::Credit
                };
                posting(format!("FILLER_{i}.GLOBAL.{c}"), side, 1, c)
            })
            .collect();
        Ok(vec![JournalEntry {
            kind: "AUTH".into(),
            key: String::new(),
            postings,
        }])
    }
}

export!(Hostile);
