//! Stripe PSP adapter (PaymentIntents API) over the host's `http` import.
//!
//! Config keys: `base-url` (required, e.g. `https://api.stripe.com` or a
//! mock at `http://127.0.0.1:4010`), `payment-method` (default
//! `pm_card_visa`). The API key never enters the guest: requests carry the
//! placeholder `Bearer {{secret:psp_api_key}}`, which the host substitutes.
//!
//! - `charge`: `POST {base-url}/v1/payment_intents` with `confirm=true`, the
//!   host's idempotency key as `Idempotency-Key` and in
//!   `metadata[paynode_key]`.
//! - `status`: searches the PaymentIntent by `metadata['paynode_key']`.
//!
//! The mapping of answers to outcomes lives in [`mapping`].

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "adapter",
    path: "../../wit/psp-adapter",
    additional_derives: [PartialEq, Eq],
});

pub mod mapping;

use paynode::psp_adapter::http::{self, Request};
use paynode::psp_adapter::log::{self, Level};
use paynode::psp_adapter::types::Failure;

pub const AUTHORIZATION: &str = "Bearer {{secret:psp_api_key}}";
pub const DEFAULT_PAYMENT_METHOD: &str = "pm_card_visa";

/// Effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub base_url: String,
    pub payment_method: String,
}

fn get<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

pub fn settings(config: &[(String, String)]) -> Result<Settings, String> {
    let base_url = get(config, "base-url").ok_or("config `base-url` is required")?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(format!(
            "config `base-url` must be an http(s) URL, not {base_url:?}"
        ));
    }
    Ok(Settings {
        base_url: base_url.trim_end_matches('/').to_string(),
        payment_method: get(config, "payment-method")
            .unwrap_or(DEFAULT_PAYMENT_METHOD)
            .to_string(),
    })
}

fn declined(code: &str, message: String) -> Outcome {
    Outcome::Declined(Failure {
        code: code.into(),
        message,
    })
}

/// The charge request, or the outcome when nothing may be sent (nothing
/// left the node, so refusing is safe).
pub fn charge_request(
    config: &[(String, String)],
    req: &ChargeRequest,
) -> Result<Request, Outcome> {
    let s = settings(config).map_err(|m| declined("invalid_config", m))?;
    if req.amount.quantity <= 0 {
        return Err(declined(
            "invalid_amount",
            format!("amount must be positive, got {}", req.amount.quantity),
        ));
    }
    let currency = &req.amount.currency;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(declined(
            "invalid_currency",
            format!("currency must be an ISO-4217 code, got {currency:?}"),
        ));
    }
    if req.idempotency_key.is_empty() {
        return Err(declined(
            "invalid_request",
            "missing idempotency key".into(),
        ));
    }
    let body = mapping::charge_form(
        req.amount.quantity,
        currency,
        &s.payment_method,
        &req.payment_order_id,
        &req.idempotency_key,
    );
    Ok(Request {
        method: "POST".into(),
        url: format!("{}/v1/payment_intents", s.base_url),
        headers: vec![
            ("Authorization".into(), AUTHORIZATION.into()),
            ("Idempotency-Key".into(), req.idempotency_key.clone()),
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        body: body.into_bytes(),
    })
}

/// The status (search) request. A config error here is `unknown`: the
/// earlier charge may have reached the PSP.
pub fn status_request(
    config: &[(String, String)],
    req: &ChargeRequest,
) -> Result<Request, Outcome> {
    let s = settings(config).map_err(|m| Outcome::Unknown(format!("cannot query the PSP: {m}")))?;
    Ok(Request {
        method: "GET".into(),
        url: mapping::search_url(&s.base_url, &req.idempotency_key),
        headers: vec![("Authorization".into(), AUTHORIZATION.into())],
        body: Vec::new(),
    })
}

fn exchange(
    what: &str,
    req: &ChargeRequest,
    request: Result<Request, Outcome>,
    map: fn(&http::Response) -> Outcome,
) -> Outcome {
    let (outcome, detail) = match request {
        Err(outcome) => (outcome, "not sent".to_string()),
        Ok(request) => match http::send(&request) {
            Ok(resp) => (map(&resp), format!("HTTP {}", resp.status)),
            Err(err) => (mapping::map_http_error(&err), format!("{err:?}")),
        },
    };
    log::write(
        Level::Debug,
        &format!(
            "psp-stripe {what} order={} attempt={} {detail} -> {outcome:?}",
            req.payment_order_id, req.attempt
        ),
    );
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

    fn charge(config: Config, request: ChargeRequest) -> Outcome {
        let http_request = charge_request(&config, &request);
        exchange(
            "charge",
            &request,
            http_request,
            mapping::map_charge_response,
        )
    }

    fn status(config: Config, request: ChargeRequest) -> Outcome {
        let http_request = status_request(&config, &request);
        exchange(
            "status",
            &request,
            http_request,
            mapping::map_search_response,
        )
    }
}

export!(Stripe);

#[cfg(test)]
mod tests {
    use super::*;
    use paynode::psp_adapter::types::Money;

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
        let r = charge_request(
            &cfg(&[("base-url", "http://psp.test"), ("payment-method", "pm_x")]),
            &req(5, "usd"),
        )
        .unwrap();
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
        assert_eq!(
            code(charge_request(
                &cfg(&[("base-url", "psp.test")]),
                &req(1, "EUR")
            )),
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
        assert_eq!(
            r.headers,
            vec![("Authorization".to_string(), AUTHORIZATION.to_string())]
        );
        assert!(r.body.is_empty());
        assert!(matches!(
            status_request(&[], &req(1, "EUR")),
            Err(Outcome::Unknown(_))
        ));
    }
}

/// Runs the fixtures the host harness runs, against the pure logic, with a
/// scripted exchange in place of the host's `http::send`.
#[cfg(test)]
mod fixture_tests {
    use super::*;
    use paynode::psp_adapter::http::{HttpError, Response};
    use paynode::psp_adapter::types::Money;
    use serde_json::{json, Value};

    /// `"*"` in the expectation matches anything (the harness's wildcard).
    fn matches(want: &Value, got: &Value) -> bool {
        match (want, got) {
            (Value::String(w), _) if w == "*" => true,
            (Value::Object(w), Value::Object(g)) => {
                w.len() == g.len()
                    && w.iter()
                        .all(|(k, v)| g.get(k).is_some_and(|g| matches(v, g)))
            }
            (Value::Array(w), Value::Array(g)) => {
                w.len() == g.len() && w.iter().zip(g).all(|(w, g)| matches(w, g))
            }
            _ => want == got,
        }
    }

    fn config_of(v: &Value) -> Vec<(String, String)> {
        v.as_object()
            .expect("config object")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().expect("string config value").to_string(),
                )
            })
            .collect()
    }

    /// Every (file, case, effective config) of this crate's fixtures.
    type Case = (String, Value, Vec<(String, String)>);

    fn fixture_cases() -> Vec<Case> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
        let mut out = Vec::new();
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            for case in doc["cases"].as_array().unwrap() {
                let config = config_of(case.get("config").unwrap_or(&doc["config"]));
                out.push((file.clone(), case.clone(), config));
            }
        }
        assert!(!out.is_empty());
        out
    }

    fn outcome_json(o: &Outcome) -> Value {
        match o {
            Outcome::Succeeded(r) => json!({ "succeeded": r }),
            Outcome::Declined(f) => json!({ "declined": { "code": f.code, "message": f.message } }),
            Outcome::Transient(f) => {
                json!({ "transient": { "code": f.code, "message": f.message } })
            }
            Outcome::Unknown(r) => json!({ "unknown": r }),
        }
    }

    fn request_of(v: &Value) -> ChargeRequest {
        ChargeRequest {
            payment_order_id: v["paymentOrderId"].as_str().unwrap().into(),
            payment_id: v["paymentId"].as_str().unwrap().into(),
            seller_id: v["sellerId"].as_str().unwrap().into(),
            amount: Money {
                quantity: v["amount"]["quantity"].as_i64().unwrap(),
                currency: v["amount"]["currency"].as_str().unwrap().into(),
            },
            attempt: v["attempt"].as_u64().unwrap() as u32,
            idempotency_key: v["idempotencyKey"].as_str().unwrap().into(),
        }
    }

    fn check_request(name: &str, want: &Value, got: &Request) {
        assert_eq!(want["method"], got.method.as_str(), "{name}");
        assert_eq!(want["url"], got.url.as_str(), "{name}");
        for (k, v) in want["headers"].as_object().unwrap() {
            let found = got
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str());
            assert_eq!(found, v.as_str(), "{name}: header {k}");
        }
        let body = String::from_utf8(got.body.clone()).unwrap();
        for part in want["bodyContains"].as_array().unwrap() {
            assert!(
                body.contains(part.as_str().unwrap()),
                "{name}: body {body} lacks {part}"
            );
        }
    }

    fn answer(v: &Value) -> Result<Response, HttpError> {
        if let Some(e) = v.get("error") {
            return Err(match e.as_str().unwrap() {
                "timeout" => HttpError::Timeout,
                "connect-failed" => HttpError::ConnectFailed("connection refused".into()),
                "failed-after-send" => HttpError::FailedAfterSend("connection reset".into()),
                "refused" => HttpError::Refused("host not allowed".into()),
                other => panic!("bad error {other}"),
            });
        }
        Ok(Response {
            status: v["status"].as_u64().unwrap() as u16,
            headers: v["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
                .collect(),
            body: v["body"].as_str().unwrap().as_bytes().to_vec(),
        })
    }

    #[test]
    fn fixtures_hold() {
        for (file, case, config) in fixture_cases() {
            let name = format!("{file}: {}", case["name"]);
            let req = request_of(&case["input"]);
            let (built, map): (_, fn(&Response) -> Outcome) = match case["call"].as_str().unwrap() {
                "charge" => (charge_request(&config, &req), mapping::map_charge_response),
                "status" => (status_request(&config, &req), mapping::map_search_response),
                other => panic!("{name}: bad call {other}"),
            };
            let http = case["http"].as_array().unwrap();
            let outcome = match built {
                Err(outcome) => {
                    assert!(http.is_empty(), "{name}: nothing should be sent");
                    outcome
                }
                Ok(request) => {
                    assert_eq!(http.len(), 1, "{name}: one exchange");
                    check_request(&name, &http[0]["expect"], &request);
                    match answer(&http[0]["respond"]) {
                        Ok(resp) => map(&resp),
                        Err(e) => mapping::map_http_error(&e),
                    }
                }
            };
            let got = outcome_json(&outcome);
            assert!(matches(&case["expect"], &got), "{name}: got {got}");
        }
    }
}
