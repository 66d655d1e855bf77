//! PSP adapter for the "acquirer" JSON API, written from the template.
//! `charge`: `POST /v2/payments` (idempotency key as `merchantReference`,
//! decimal amount, API key in `X-Api-Key`); `status`: search by reference,
//! authoritative: an empty list means never charged. Config: `base-url`,
//! `merchant-account`.

use paynode_guest::json::{self, header};
use paynode_guest::table::{Rule, Table, Verdict};
use paynode_guest::{money, outcome, ChargeRequest, Guest, HttpError, Outcome, PluginInfo};
use paynode_guest::{Request, Response, Settings};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

const API_KEY: &str = "{{secret:acquirer_api_key}}";

/// Documented errors; any other (500, 504, 3xx...) may hide a charge: `unknown`.
const ERRORS: Table = Table(&[
    Rule::new(401..=403, Verdict::Declined).default_code("unauthorized"),
    Rule::new(409..=409, Verdict::Transient).codes(&["request_in_flight"]),
    Rule::new(422..=422, Verdict::Declined),
    Rule::new(429..=429, Verdict::Transient).default_code("rate_limited"),
    Rule::new(503..=503, Verdict::Transient).codes(&["not_processed"]),
]);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentBody<'a> {
    merchant_account: &'a str,
    merchant_reference: &'a str,
    amount: Amount<'a>,
}

#[derive(Serialize)]
struct Amount<'a> {
    value: String,
    currency: &'a str,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Payment {
    psp_reference: String,
    result_code: String,
    refusal_reason_code: String,
    refusal_reason: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ApiError {
    error_code: String,
    message: String,
}

fn map_payment(p: Payment) -> Outcome {
    match p.result_code.as_str() {
        "Authorised" if !p.psp_reference.is_empty() => outcome::succeeded(p.psp_reference),
        "Refused" | "Cancelled" => {
            let code = Some(p.refusal_reason_code).filter(|c| !c.is_empty());
            outcome::declined(code.unwrap_or(p.result_code), p.refusal_reason)
        }
        other => outcome::unknown(format!("payment {} is {other}", p.psp_reference)),
    }
}

fn map_error(resp: &Response) -> Outcome {
    let error: ApiError = resp.json().unwrap_or_default();
    let code = Some(error.error_code.clone()).filter(|c| !c.is_empty());
    let message = Some(error.message).filter(|m| !m.is_empty());
    let message = message.unwrap_or_else(|| format!("HTTP {}", resp.status));
    ERRORS.outcome(resp.status, &[error.error_code.as_str()], |_| code, message)
}

/// Sends `request`; maps a failed exchange with `failed`, a 2xx body with `map`.
fn exchange<T: DeserializeOwned>(
    request: &Request,
    failed: fn(&HttpError) -> Outcome,
    map: impl Fn(T) -> Outcome,
) -> Outcome {
    match json::send(request) {
        Err(error) => failed(&error),
        Ok(resp) if !resp.is_success() => map_error(&resp),
        Ok(resp) => resp
            .json::<T>()
            .map_or_else(|| outcome::unknown("unreadable answer"), map),
    }
}

fn charge(config: &[(String, String)], req: &ChargeRequest) -> Result<Outcome, String> {
    let settings = Settings(config);
    let base_url = settings.base_url("base-url")?;
    let body = PaymentBody {
        merchant_account: settings.require("merchant-account")?,
        merchant_reference: &req.idempotency_key,
        amount: Amount {
            value: money::decimal(&req.amount),
            currency: &req.amount.currency,
        },
    };
    if let Err(refused) = money::check(&req.amount) {
        return Ok(refused);
    }
    let headers = vec![
        header("X-Api-Key", API_KEY),
        header("Idempotency-Key", req.idempotency_key.as_str()),
    ];
    let request = json::post(format!("{base_url}/v2/payments"), headers, &body);
    Ok(exchange(&request, outcome::from_http_error, map_payment))
}

#[derive(Deserialize)]
struct Search {
    payments: Vec<Payment>,
}

fn status(config: &[(String, String)], req: &ChargeRequest) -> Result<Outcome, String> {
    let base_url = Settings(config).base_url("base-url")?;
    let reference = json::encode(&req.idempotency_key);
    let url = format!("{base_url}/v2/payments?merchantReference={reference}");
    let request = json::get(url, vec![header("X-Api-Key", API_KEY)]);
    Ok(exchange(
        &request,
        outcome::from_status_http_error,
        |found: Search| match found.payments.into_iter().next() {
            Some(payment) => map_payment(payment),
            None => outcome::never_charged("the acquirer has no payment with this reference"),
        },
    ))
}

struct Acquirer;

impl Guest for Acquirer {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        charge(&config, &request).unwrap_or_else(|m| outcome::declined("invalid_config", m))
    }

    fn status(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        // The charge may have reached the acquirer: never a refusal here.
        status(&config, &request).unwrap_or_else(outcome::unknown)
    }
}

paynode_guest::export_adapter!(Acquirer);
