//! Stripe PSP adapter (PaymentIntents API), on the paynode guest SDK.
//!
//! Config keys: `base-url` (required, e.g. `https://api.stripe.com` or a
//! mock at `http://127.0.0.1:4010`), `payment-method` (default
//! `pm_card_visa`). The API key never enters the guest: requests carry the
//! placeholder `Bearer {{secret:psp_api_key}}`, which the host substitutes
//! where the activation's egress policy binds that secret.
//!
//! - `charge`: `POST {base-url}/v1/payment_intents` with `confirm=true`, the
//!   host's idempotency key as `Idempotency-Key` and in
//!   `metadata[paynode_key]`.
//! - `status`: searches the PaymentIntent by `metadata['paynode_key']`.
//!
//! The mapping of answers to outcomes lives in [`mapping`].

pub mod mapping;

use paynode_guest::json::{self, bearer, header};
use paynode_guest::{
    debug, money, outcome, ChargeRequest, Guest, Outcome, PluginInfo, Request, Response, Settings,
};

/// The secret the host injects into `Authorization`.
pub const API_KEY: &str = "psp_api_key";
pub const DEFAULT_PAYMENT_METHOD: &str = "pm_card_visa";

/// The charge request, or the outcome when nothing may be sent (nothing
/// left the node, so refusing is safe).
pub fn charge_request(
    config: &[(String, String)],
    req: &ChargeRequest,
) -> Result<Request, Outcome> {
    let settings = Settings(config);
    let base_url = settings
        .base_url("base-url")
        .map_err(|m| outcome::declined("invalid_config", m))?;
    money::check(&req.amount)?;
    if req.idempotency_key.is_empty() {
        return Err(outcome::declined(
            "invalid_request",
            "missing idempotency key",
        ));
    }
    let method = settings
        .get("payment-method")
        .unwrap_or(DEFAULT_PAYMENT_METHOD);
    let headers = vec![
        bearer(API_KEY),
        header("Idempotency-Key", req.idempotency_key.as_str()),
    ];
    let url = format!("{base_url}/v1/payment_intents");
    Ok(json::post_form(
        url,
        headers,
        &mapping::charge_fields(req, method),
    ))
}

/// The status (search) request. A config error here is `unknown`: the
/// earlier charge may have reached the PSP.
pub fn status_request(
    config: &[(String, String)],
    req: &ChargeRequest,
) -> Result<Request, Outcome> {
    let base_url = Settings(config)
        .base_url("base-url")
        .map_err(|m| outcome::unknown(format!("cannot query the PSP: {m}")))?;
    let url = mapping::search_url(&base_url, &req.idempotency_key);
    Ok(json::get(url, vec![bearer(API_KEY)]))
}

fn exchange(
    what: &str,
    req: &ChargeRequest,
    request: Result<Request, Outcome>,
    map: fn(&Response) -> Outcome,
) -> Outcome {
    let (outcome, detail) = match request {
        Err(outcome) => (outcome, "not sent".to_string()),
        Ok(request) => match json::send(&request) {
            Ok(resp) => (map(&resp), format!("HTTP {}", resp.status)),
            Err(err) => (outcome::from_http_error(&err), format!("{err:?}")),
        },
    };
    debug(&format!(
        "psp-stripe {what} order={} attempt={} {detail} -> {outcome:?}",
        req.payment_order_id, req.attempt
    ));
    outcome
}

struct Stripe;

impl Guest for Stripe {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "psp-stripe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        let http_request = charge_request(&config, &request);
        exchange(
            "charge",
            &request,
            http_request,
            mapping::map_charge_response,
        )
    }

    fn status(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        let http_request = status_request(&config, &request);
        exchange(
            "status",
            &request,
            http_request,
            mapping::map_search_response,
        )
    }
}

paynode_guest::export_adapter!(Stripe);

#[cfg(test)]
mod tests {
    use super::*;
    use paynode_guest::Money;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(quantity: i64, currency: &str) -> ChargeRequest {
        ChargeRequest {
            payment_order_id: "po-1".into(),
            payment_id: "p-1".into(),
            seller_id: "s-1".into(),
            amount: Money {
                quantity,
                currency: currency.into(),
            },
            attempt: 1,
            idempotency_key: "k-1".into(),
        }
    }

    #[test]
    fn charge_request_shape() {
        let r =
            charge_request(&cfg(&[("base-url", "http://psp.test/")]), &req(1000, "EUR")).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "http://psp.test/v1/payment_intents");
        assert!(r.headers.contains(&(
            "Authorization".into(),
            "Bearer {{secret:psp_api_key}}".into()
        )));
        assert!(r
            .headers
            .contains(&("Idempotency-Key".into(), "k-1".into())));
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "amount=1000&currency=eur&confirm=true&payment_method=pm_card_visa&metadata[payment_order_id]=po-1&metadata[paynode_key]=k-1"
        );
        let custom = cfg(&[("base-url", "http://psp.test"), ("payment-method", "pm_x")]);
        let r = charge_request(&custom, &req(5, "usd")).unwrap();
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("payment_method=pm_x"));
    }

    #[test]
    fn charge_refuses_bad_input_without_sending() {
        let code = |r: Result<Request, Outcome>| match r {
            Err(Outcome::Declined(f)) => f.code,
            other => panic!("{other:?}"),
        };
        let good = cfg(&[("base-url", "http://psp.test")]);
        assert_eq!(code(charge_request(&[], &req(1, "EUR"))), "invalid_config");
        let bad_url = cfg(&[("base-url", "psp.test")]);
        assert_eq!(
            code(charge_request(&bad_url, &req(1, "EUR"))),
            "invalid_config"
        );
        assert_eq!(
            code(charge_request(&good, &req(0, "EUR"))),
            "invalid_amount"
        );
        assert_eq!(
            code(charge_request(&good, &req(-5, "EUR"))),
            "invalid_amount"
        );
        assert_eq!(
            code(charge_request(&good, &req(1, "EURO"))),
            "invalid_currency"
        );
    }

    #[test]
    fn status_request_shape() {
        let r = status_request(&cfg(&[("base-url", "http://psp.test")]), &req(1, "EUR")).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.url,
            "http://psp.test/v1/payment_intents/search?query=metadata%5B%27paynode_key%27%5D%3A%27k-1%27"
        );
        assert_eq!(r.headers, vec![bearer(API_KEY)]);
        assert!(r.body.is_empty());
        assert!(matches!(
            status_request(&[], &req(1, "EUR")),
            Err(Outcome::Unknown(_))
        ));
    }
}
