//! Money is an integer number of minor units plus an ISO-4217 code. No floats.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An amount in minor units (cents for EUR) of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    /// Integer minor units; must be > 0 where an amount is charged.
    pub quantity: i64,
    /// ISO-4217 alphabetic code, upper case (e.g. "EUR").
    pub currency: String,
}

impl Money {
    pub fn new(quantity: i64, currency: &str) -> Self {
        Money {
            quantity,
            currency: currency.to_string(),
        }
    }
}

/// Currencies the node accepts. Kept explicit: a typo such as "EUROS" must be
/// a 4xx, not a new ledger currency.
const KNOWN_CURRENCIES: &[&str] = &[
    "EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RON", "BGN", "TRY",
    "JPY", "CNY", "AUD", "CAD", "NZD", "SGD", "HKD", "INR", "BRL", "MXN", "ZAR", "KRW",
];

pub fn is_known_currency(code: &str) -> bool {
    KNOWN_CURRENCIES.contains(&code)
}
