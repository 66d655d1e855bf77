//! Marketplace posting rules.
//!
//! A succeeded order of amount A in currency C for seller S posts:
//! - `AUTH`: debit `AUTH_RECEIVABLE.GLOBAL.C` A, credit `AUTH_LIABILITY.GLOBAL.C` A
//! - `CAPTURE`: debit `AUTH_LIABILITY.GLOBAL.C` A, debit `PSP_RECEIVABLES.GLOBAL.C` A,
//!   credit `AUTH_RECEIVABLE.GLOBAL.C` A, credit `MERCHANT_ACCOUNT.S.C` A
//!
//! A succeeded refund of amount R posts the reverse of the capture for R:
//! - `REFUND` (key: the refund id): debit `MERCHANT_ACCOUNT.S.C` R, credit
//!   `PSP_RECEIVABLES.GLOBAL.C` R
//!
//! A refund outside 0 < R <= captured, or in another currency than the
//! capture, is `invalid_amount`.
//!
//! A failed order posts nothing (its amount is not checked: nothing is
//! written). A succeeded order with a non-positive amount is
//! `invalid_amount`; an empty or malformed currency or seller id (which would
//! corrupt account codes) is `invalid_order`.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "rules",
    path: "../../wit/posting-rules-v2",
    additional_derives: [PartialEq, Eq],
});

use paynode::posting_rules::types::{Money, OrderStatus, Posting, Side};

fn posting(account: String, side: Side, amount: &Money) -> Posting {
    Posting {
        account,
        side,
        amount: amount.clone(),
    }
}

fn rule_error(code: &str, message: String) -> RuleError {
    RuleError {
        code: code.into(),
        message,
    }
}

/// A valid account-code segment: non-empty, no dots or whitespace.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains('.') && !s.chars().any(char::is_whitespace)
}

pub fn post(order: &FinalizedOrder) -> Result<Vec<JournalEntry>, RuleError> {
    match order.status {
        OrderStatus::Failed => return Ok(Vec::new()),
        OrderStatus::Succeeded => {}
    }
    let amount = &order.amount;
    if amount.quantity <= 0 {
        return Err(rule_error(
            "invalid_amount",
            format!(
                "order {} has non-positive amount {}",
                order.payment_order_id, amount.quantity
            ),
        ));
    }
    let c = &amount.currency;
    if !valid_segment(c) {
        return Err(rule_error(
            "invalid_order",
            format!(
                "order {} has invalid currency {c:?}",
                order.payment_order_id
            ),
        ));
    }
    let s = &order.seller_id;
    if !valid_segment(s) {
        return Err(rule_error(
            "invalid_order",
            format!(
                "order {} has invalid seller id {s:?}",
                order.payment_order_id
            ),
        ));
    }
    Ok(vec![
        JournalEntry {
            kind: "AUTH".into(),
            key: String::new(),
            postings: vec![
                posting(format!("AUTH_RECEIVABLE.GLOBAL.{c}"), Side::Debit, amount),
                posting(format!("AUTH_LIABILITY.GLOBAL.{c}"), Side::Credit, amount),
            ],
        },
        JournalEntry {
            kind: "CAPTURE".into(),
            key: String::new(),
            postings: vec![
                posting(format!("AUTH_LIABILITY.GLOBAL.{c}"), Side::Debit, amount),
                posting(format!("PSP_RECEIVABLES.GLOBAL.{c}"), Side::Debit, amount),
                posting(format!("AUTH_RECEIVABLE.GLOBAL.{c}"), Side::Credit, amount),
                posting(format!("MERCHANT_ACCOUNT.{s}.{c}"), Side::Credit, amount),
            ],
        },
    ])
}

pub fn post_refund(refund: &RefundedOrder) -> Result<Vec<JournalEntry>, RuleError> {
    let (amount, captured) = (&refund.amount, &refund.captured);
    if amount.quantity <= 0
        || amount.quantity > captured.quantity
        || amount.currency != captured.currency
    {
        return Err(rule_error(
            "invalid_amount",
            format!(
                "refund {} of {} {} does not fit the capture of {} {}",
                refund.refund_id,
                amount.quantity,
                amount.currency,
                captured.quantity,
                captured.currency
            ),
        ));
    }
    let (c, s) = (&amount.currency, &refund.seller_id);
    if !valid_segment(c) || !valid_segment(s) || refund.refund_id.is_empty() {
        return Err(rule_error(
            "invalid_order",
            format!(
                "refund {:?} has an invalid currency, seller id or refund id",
                refund.refund_id
            ),
        ));
    }
    Ok(vec![JournalEntry {
        kind: "REFUND".into(),
        key: refund.refund_id.clone(),
        postings: vec![
            posting(format!("MERCHANT_ACCOUNT.{s}.{c}"), Side::Debit, amount),
            posting(format!("PSP_RECEIVABLES.GLOBAL.{c}"), Side::Credit, amount),
        ],
    }])
}

struct Marketplace;

impl Guest for Marketplace {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "ledger-marketplace".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn post(_config: Config, order: FinalizedOrder) -> Result<Vec<JournalEntry>, RuleError> {
        post(&order)
    }

    fn post_refund(_config: Config, refund: RefundedOrder) -> Result<Vec<JournalEntry>, RuleError> {
        post_refund(&refund)
    }
}

export!(Marketplace);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(quantity: i64, status: OrderStatus) -> FinalizedOrder {
        FinalizedOrder {
            payment_order_id: "po-1".into(),
            payment_id: "p-1".into(),
            seller_id: "s-1".into(),
            amount: Money {
                quantity,
                currency: "EUR".into(),
            },
            status,
            psp_reference: "ref".into(),
        }
    }

    fn sum(e: &JournalEntry, side: Side) -> i64 {
        e.postings
            .iter()
            .filter(|p| p.side == side)
            .map(|p| p.amount.quantity)
            .sum()
    }

    #[test]
    fn succeeded_posts_auth_and_capture() {
        let entries = post(&order(1000, OrderStatus::Succeeded)).unwrap();
        assert_eq!(entries.len(), 2);
        let accounts = |e: &JournalEntry| {
            e.postings
                .iter()
                .map(|p| (p.account.clone(), p.side))
                .collect::<Vec<_>>()
        };
        assert_eq!(entries[0].kind, "AUTH");
        assert_eq!(
            accounts(&entries[0]),
            vec![
                ("AUTH_RECEIVABLE.GLOBAL.EUR".to_string(), Side::Debit),
                ("AUTH_LIABILITY.GLOBAL.EUR".to_string(), Side::Credit),
            ]
        );
        assert_eq!(entries[1].kind, "CAPTURE");
        assert_eq!(
            accounts(&entries[1]),
            vec![
                ("AUTH_LIABILITY.GLOBAL.EUR".to_string(), Side::Debit),
                ("PSP_RECEIVABLES.GLOBAL.EUR".to_string(), Side::Debit),
                ("AUTH_RECEIVABLE.GLOBAL.EUR".to_string(), Side::Credit),
                ("MERCHANT_ACCOUNT.s-1.EUR".to_string(), Side::Credit),
            ]
        );
        for e in &entries {
            assert_eq!(e.key, "");
            assert_eq!(sum(e, Side::Debit), sum(e, Side::Credit));
            assert!(e.postings.iter().all(|p| p.amount
                == Money {
                    quantity: 1000,
                    currency: "EUR".into()
                }));
        }
    }

    #[test]
    fn failed_posts_nothing() {
        assert_eq!(post(&order(1000, OrderStatus::Failed)), Ok(vec![]));
        assert_eq!(post(&order(0, OrderStatus::Failed)), Ok(vec![]));
    }

    #[test]
    fn rejects_bad_orders() {
        for q in [0, -1, i64::MIN] {
            assert_eq!(
                post(&order(q, OrderStatus::Succeeded)).unwrap_err().code,
                "invalid_amount"
            );
        }
        let mut o = order(1, OrderStatus::Succeeded);
        o.seller_id = "a.b".into();
        assert_eq!(post(&o).unwrap_err().code, "invalid_order");
        let mut o = order(1, OrderStatus::Succeeded);
        o.amount.currency = String::new();
        assert_eq!(post(&o).unwrap_err().code, "invalid_order");
    }
}

/// Runs the fixtures the host harness runs, against the pure logic.
#[cfg(test)]
mod fixture_tests {
    use super::*;
    use serde_json::{json, Value};

    use paynode_guest::fixtures::{cases, matches, Case};

    fn order_of(v: &Value) -> FinalizedOrder {
        FinalizedOrder {
            payment_order_id: v["paymentOrderId"].as_str().unwrap().into(),
            payment_id: v["paymentId"].as_str().unwrap().into(),
            seller_id: v["sellerId"].as_str().unwrap().into(),
            amount: Money {
                quantity: v["amount"]["quantity"].as_i64().unwrap(),
                currency: v["amount"]["currency"].as_str().unwrap().into(),
            },
            status: match v["status"].as_str().unwrap() {
                "succeeded" => OrderStatus::Succeeded,
                "failed" => OrderStatus::Failed,
                other => panic!("bad status {other}"),
            },
            psp_reference: v["pspReference"].as_str().unwrap().into(),
        }
    }

    fn refund_of(v: &Value) -> RefundedOrder {
        let money = |m: &Value| Money {
            quantity: m["quantity"].as_i64().unwrap(),
            currency: m["currency"].as_str().unwrap().into(),
        };
        RefundedOrder {
            refund_id: v["refundId"].as_str().unwrap().into(),
            payment_order_id: v["paymentOrderId"].as_str().unwrap().into(),
            payment_id: v["paymentId"].as_str().unwrap().into(),
            seller_id: v["sellerId"].as_str().unwrap().into(),
            captured: money(&v["captured"]),
            amount: money(&v["amount"]),
            psp_reference: v["pspReference"].as_str().unwrap_or("").into(),
        }
    }

    fn entries_json(entries: &[JournalEntry]) -> Value {
        entries
            .iter()
            .map(|e| {
                json!({
                    "kind": e.kind,
                    "key": e.key,
                    "postings": e.postings.iter().map(|p| json!({
                        "account": p.account,
                        "side": match p.side { Side::Debit => "debit", Side::Credit => "credit" },
                        "amount": { "quantity": p.amount.quantity, "currency": p.amount.currency },
                    })).collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    #[test]
    fn fixtures_hold() {
        for Case {
            file,
            case,
            config: _config,
        } in cases(env!("CARGO_MANIFEST_DIR"))
        {
            let result = match case["call"].as_str().unwrap() {
                "post" => post(&order_of(&case["input"])),
                "post-refund" => post_refund(&refund_of(&case["input"])),
                other => panic!("{file}: bad call {other}"),
            };
            let got = match result {
                Ok(entries) => json!({ "ok": entries_json(&entries) }),
                Err(e) => json!({ "err": { "code": e.code, "message": e.message } }),
            };
            assert!(
                matches(&case["expect"], &got),
                "{file}: {}: got {got}",
                case["name"]
            );
        }
    }
}
