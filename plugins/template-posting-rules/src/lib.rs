//! Posting rules to start from: one `SETTLEMENT` journal per succeeded
//! order (debit `PSP_RECEIVABLES.GLOBAL.C`, credit `MERCHANT_ACCOUNT.S.C`),
//! nothing for a failed one. The host checks balance, currency and account
//! ownership of whatever is returned.

#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "rules", path: "../../wit/posting-rules" });

use paynode::posting_rules::types::{OrderStatus, Posting, Side};

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn post(
        _config: Vec<(String, String)>,
        order: FinalizedOrder,
    ) -> Result<Vec<JournalEntry>, RuleError> {
        if order.status == OrderStatus::Failed {
            return Ok(Vec::new());
        }
        if order.amount.quantity <= 0 {
            return Err(RuleError {
                code: "invalid_amount".into(),
                message: "amount must be positive".into(),
            });
        }
        let c = &order.amount.currency;
        let posting = |account: String, side: Side| Posting {
            account,
            side,
            amount: order.amount.clone(),
        };
        Ok(vec![JournalEntry {
            kind: "SETTLEMENT".into(),
            key: String::new(),
            postings: vec![
                posting(format!("PSP_RECEIVABLES.GLOBAL.{c}"), Side::Debit),
                posting(
                    format!("MERCHANT_ACCOUNT.{}.{c}", order.seller_id),
                    Side::Credit,
                ),
            ],
        }])
    }
}

export!(Component);
