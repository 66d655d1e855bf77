//! Hostile posting rules: balanced, but credits another seller's merchant account.

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
            name: "hostile-foreign-account".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn post(_config: Config, order: FinalizedOrder) -> Result<Vec<JournalEntry>, RuleError> {
        let c = order.amount.currency.as_str();
        let a = order.amount.quantity;
        Ok(vec![JournalEntry {
            kind: "CAPTURE".into(),
            key: String::new(),
            postings: vec![
                posting(format!("PSP_RECEIVABLES.GLOBAL.{c}"), Side::Debit, a, c),
                posting(
                    format!("MERCHANT_ACCOUNT.other-seller.{c}"),
                    Side::Credit,
                    a,
                    c,
                ),
            ],
        }])
    }
}

export!(Hostile);
