//! Money checks and formatting. Amounts stay integer minor units; a PSP
//! wanting a decimal string gets one built from the currency's exponent,
//! never through a float.

use crate::{outcome, Money, Outcome};

/// ISO-4217 currencies whose minor unit is not 1/100.
const EXPONENTS: &[(&str, u32)] = &[
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
];

/// Digits after the decimal point for `currency` (upper or lower case).
pub fn exponent(currency: &str) -> u32 {
    let upper = currency.to_ascii_uppercase();
    EXPONENTS
        .iter()
        .find(|(code, _)| *code == upper)
        .map_or(2, |(_, e)| *e)
}

/// Refuses, before anything is sent, an amount no PSP should be asked for:
/// not positive, or a currency that is not three letters.
pub fn check(amount: &Money) -> Result<(), Outcome> {
    if amount.quantity <= 0 {
        return Err(outcome::declined(
            "invalid_amount",
            format!("amount must be positive, got {}", amount.quantity),
        ));
    }
    let currency = &amount.currency;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(outcome::declined(
            "invalid_currency",
            format!("currency must be an ISO-4217 code, got {currency:?}"),
        ));
    }
    Ok(())
}

/// `1050 EUR` → `"10.50"`, `500 JPY` → `"500"`, `1 KWD` → `"0.001"`.
pub fn decimal(amount: &Money) -> String {
    let exponent = exponent(&amount.currency);
    let sign = if amount.quantity < 0 { "-" } else { "" };
    let minor = amount.quantity.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{minor}");
    }
    let scale = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(quantity: i64, currency: &str) -> Money {
        Money {
            quantity,
            currency: currency.into(),
        }
    }

    #[test]
    fn decimals_follow_the_currency_exponent() {
        assert_eq!(decimal(&money(1050, "EUR")), "10.50");
        assert_eq!(decimal(&money(5, "eur")), "0.05");
        assert_eq!(decimal(&money(500, "JPY")), "500");
        assert_eq!(decimal(&money(1, "KWD")), "0.001");
        assert_eq!(decimal(&money(-1050, "USD")), "-10.50");
        assert_eq!(decimal(&money(i64::MIN, "EUR")), "-92233720368547758.08");
    }

    #[test]
    fn bad_amounts_are_declined_before_sending() {
        assert!(check(&money(1, "EUR")).is_ok());
        assert!(check(&money(0, "EUR")).is_err());
        assert!(check(&money(1, "EURO")).is_err());
        assert!(check(&money(1, "E1R")).is_err());
    }
}
