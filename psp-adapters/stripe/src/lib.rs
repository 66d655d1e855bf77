//! Stripe PSP adapter (PaymentIntents and Refunds APIs, webhooks), on the
//! paynode guest SDK, for the psp-adapter 2.0.0 world.
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
//! - `refund`: `POST {base-url}/v1/refunds` for the charge's PaymentIntent,
//!   the refund's idempotency key as `Idempotency-Key` and in
//!   `metadata[paynode_key]`.
//! - `refund-status`: lists the PaymentIntent's refunds and picks the one
//!   whose `metadata[paynode_key]` is the refund's key.
//! - `parse-notification`: Stripe webhooks signed with the host secret
//!   `stripe_webhook_secret` (see [`webhook`]).
//!
//! The mapping of answers to outcomes lives in [`mapping`].

pub mod mapping;
pub mod webhook;

use mapping::{map_charge_response, map_refund_lookup, map_refund_response, map_search_response};
use paynode_guest::json::{self, bearer, header};
use paynode_guest::outcome::{from_http_error, from_status_http_error};
use paynode_guest::v2::{self, Guest, Incoming, Notification, RefundRequest, Rejection};
use paynode_guest::{
    money, outcome, ChargeRequest, HttpError, Outcome, PluginInfo, Request, Response, Settings,
};

/// The secret the host injects into `Authorization`.
pub const API_KEY: &str = "psp_api_key";
/// The host secret webhook signatures are checked with.
pub const WEBHOOK_SECRET: &str = "stripe_webhook_secret";
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

/// The refund request, or the outcome when nothing may be sent.
pub fn refund_request(
    config: &[(String, String)],
    req: &RefundRequest,
) -> Result<Request, Outcome> {
    let base_url = Settings(config)
        .base_url("base-url")
        .map_err(|m| outcome::declined("invalid_config", m))?;
    money::check(&req.amount)?;
    if req.idempotency_key.is_empty() || req.charge_reference.is_empty() {
        return Err(outcome::declined(
            "invalid_request",
            "missing idempotency key or charge reference",
        ));
    }
    let headers = vec![
        bearer(API_KEY),
        header("Idempotency-Key", req.idempotency_key.as_str()),
    ];
    let url = format!("{base_url}/v1/refunds");
    Ok(json::post_form(url, headers, &mapping::refund_fields(req)))
}

/// The lookup of the charge's refunds. What stops it is `unknown`: the
/// earlier refund may have reached the PSP.
pub fn refund_status_request(
    config: &[(String, String)],
    req: &RefundRequest,
) -> Result<Request, Outcome> {
    let base_url = Settings(config)
        .base_url("base-url")
        .map_err(|m| outcome::unknown(format!("cannot query the PSP: {m}")))?;
    if req.charge_reference.is_empty() {
        return Err(outcome::unknown(
            "no charge reference to look refunds up by",
        ));
    }
    let url = mapping::refunds_url(&base_url, &req.charge_reference);
    Ok(json::get(url, vec![bearer(API_KEY)]))
}

/// Sends `request` (unless building it already gave the outcome), maps the
/// answer or the failed exchange, and logs one line about `subject`.
fn exchange(
    what: &str,
    subject: String,
    request: Result<Request, Outcome>,
    map: impl FnOnce(&Response) -> Outcome,
    on_error: fn(&HttpError) -> Outcome,
) -> Outcome {
    let (outcome, detail) = match request {
        Err(outcome) => (outcome, "not sent".to_string()),
        Ok(request) => match v2::send(&request) {
            Ok(resp) => (map(&resp), format!("HTTP {}", resp.status)),
            Err(err) => (on_error(&err), format!("{err:?}")),
        },
    };
    v2::debug(&format!(
        "psp-stripe {what} {subject} {detail} -> {outcome:?}"
    ));
    outcome
}

fn order(req: &ChargeRequest) -> String {
    format!("order={} attempt={}", req.payment_order_id, req.attempt)
}

fn refund(req: &RefundRequest) -> String {
    format!("refund={} attempt={}", req.refund_id, req.attempt)
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
        let sent = charge_request(&config, &request);
        exchange(
            "charge",
            order(&request),
            sent,
            map_charge_response,
            from_http_error,
        )
    }

    fn status(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        let sent = status_request(&config, &request);
        exchange(
            "status",
            order(&request),
            sent,
            map_search_response,
            from_http_error,
        )
    }

    fn refund(config: Vec<(String, String)>, request: RefundRequest) -> Outcome {
        let sent = refund_request(&config, &request);
        exchange(
            "refund",
            refund(&request),
            sent,
            map_refund_response,
            from_http_error,
        )
    }

    fn refund_status(config: Vec<(String, String)>, request: RefundRequest) -> Outcome {
        let sent = refund_status_request(&config, &request);
        let map = |resp: &Response| map_refund_lookup(resp, &request.idempotency_key);
        exchange(
            "refund-status",
            refund(&request),
            sent,
            map,
            from_status_http_error,
        )
    }

    fn parse_notification(
        _config: Vec<(String, String)>,
        message: Incoming,
    ) -> Result<Vec<Notification>, Rejection> {
        webhook::parse(&message, |payload| v2::hmac_sha256(WEBHOOK_SECRET, payload))
    }
}

paynode_guest::v2::export_adapter_v2!(Stripe);

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

    fn refund_req(reason: &str) -> RefundRequest {
        RefundRequest {
            refund_id: "rf-1".into(),
            payment_order_id: "po-1".into(),
            payment_id: "p-1".into(),
            seller_id: "s-1".into(),
            charge_reference: "pi_1".into(),
            charge_idempotency_key: "k-1".into(),
            captured: Money {
                quantity: 1000,
                currency: "EUR".into(),
            },
            amount: Money {
                quantity: 400,
                currency: "EUR".into(),
            },
            reason: reason.into(),
            attempt: 1,
            idempotency_key: "rk-1".into(),
        }
    }

    #[test]
    fn refund_request_shape() {
        let good = cfg(&[("base-url", "http://psp.test/")]);
        let r = refund_request(&good, &refund_req("duplicate")).unwrap();
        assert_eq!(
            (r.method.as_str(), r.url.as_str()),
            ("POST", "http://psp.test/v1/refunds")
        );
        assert!(r.headers.contains(&bearer(API_KEY)));
        assert!(r
            .headers
            .contains(&("Idempotency-Key".into(), "rk-1".into())));
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "payment_intent=pi_1&amount=400&metadata[paynode_key]=rk-1&metadata[refund_id]=rf-1&metadata[payment_order_id]=po-1&reason=duplicate&metadata[reason]=duplicate"
        );
        let r = refund_request(&good, &refund_req("customer request")).unwrap();
        let body = String::from_utf8(r.body).unwrap();
        assert!(
            !body.contains("&reason=") && body.ends_with("metadata[reason]=customer%20request")
        );
        let mut no_ref = refund_req("");
        no_ref.charge_reference.clear();
        assert!(matches!(
            refund_request(&good, &no_ref),
            Err(Outcome::Declined(_))
        ));
        assert!(matches!(
            refund_request(&[], &refund_req("")),
            Err(Outcome::Declined(_))
        ));

        let r = refund_status_request(&good, &refund_req("")).unwrap();
        assert_eq!(
            r.url,
            "http://psp.test/v1/refunds?payment_intent=pi_1&limit=100"
        );
        assert_eq!(r.headers, vec![bearer(API_KEY)]);
        assert!(matches!(
            refund_status_request(&[], &refund_req("")),
            Err(Outcome::Unknown(_))
        ));
        assert!(matches!(
            refund_status_request(&good, &no_ref),
            Err(Outcome::Unknown(_))
        ));
    }
}
