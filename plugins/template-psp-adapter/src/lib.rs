//! A PSP adapter to start from, for a JSON API shaped like most:
//!
//! - `charge`: `POST {base-url}/charges` with `{"reference", "amount",
//!   "currency"}`, the host's idempotency key as `Idempotency-Key` and the
//!   API key as `Authorization: Bearer {{secret:psp_api_key}}` (the host
//!   fills it in where the activation's egress policy binds it);
//! - `status`: `GET {base-url}/charges?reference=<key>`.
//!
//! Map only explicit answers to `succeeded`/`declined`; anything unclear,
//! a timeout included, is `unknown` (see the WIT for what each outcome
//! makes the host do). Config: `base-url` (required).

use paynode_guest::json::{self, bearer, header};
use paynode_guest::table::{Rule, Table, Verdict};
use paynode_guest::{
    money, outcome, ChargeRequest, Guest, Outcome, PluginInfo, Response, Settings,
};
use serde::{Deserialize, Serialize};

const API_KEY: &str = "psp_api_key";

/// Non-2xx answers the PSP documents; everything else is `unknown`.
const ERRORS: Table = Table(&[
    Rule::new(429..=429, Verdict::Transient).default_code("rate_limited"),
    Rule::new(400..=422, Verdict::Declined),
]);

#[derive(Serialize)]
struct ChargeBody<'a> {
    reference: &'a str,
    amount: i64,
    currency: &'a str,
}

#[derive(Deserialize)]
struct Charge {
    id: String,
    status: String,
    #[serde(default)]
    code: String,
}

#[derive(Deserialize)]
struct Found {
    charges: Vec<Charge>,
}

fn map_charge(charge: &Charge) -> Outcome {
    match charge.status.as_str() {
        "approved" if !charge.id.is_empty() => outcome::succeeded(&charge.id),
        "declined" => outcome::declined(&charge.code, format!("charge {} declined", charge.id)),
        other => outcome::unknown(format!("charge {} is {other}", charge.id)),
    }
}

fn map_error(resp: &Response) -> Outcome {
    let message = format!("HTTP {} from PSP", resp.status);
    ERRORS.outcome(resp.status, &[], |_| None, message)
}

fn charge(config: &[(String, String)], req: &ChargeRequest) -> Outcome {
    let base_url = match Settings(config).base_url("base-url") {
        Ok(url) => url,
        Err(message) => return outcome::declined("invalid_config", message),
    };
    if let Err(refused) = money::check(&req.amount) {
        return refused;
    }
    let body = ChargeBody {
        reference: &req.idempotency_key,
        amount: req.amount.quantity,
        currency: &req.amount.currency,
    };
    let headers = vec![
        bearer(API_KEY),
        header("Idempotency-Key", req.idempotency_key.as_str()),
    ];
    match json::send(&json::post(format!("{base_url}/charges"), headers, &body)) {
        Err(error) => outcome::from_http_error(&error),
        Ok(resp) if !resp.is_success() => map_error(&resp),
        Ok(resp) => resp
            .json::<Charge>()
            .map_or_else(|| outcome::unknown("unreadable answer"), |c| map_charge(&c)),
    }
}

fn status(config: &[(String, String)], req: &ChargeRequest) -> Outcome {
    let base_url = match Settings(config).base_url("base-url") {
        Ok(url) => url,
        // The charge may have reached the PSP: never a refusal here.
        Err(message) => return outcome::unknown(message),
    };
    let url = format!(
        "{base_url}/charges?reference={}",
        json::encode(&req.idempotency_key)
    );
    match json::send(&json::get(url, vec![bearer(API_KEY)])) {
        Err(error) => outcome::from_status_http_error(&error),
        Ok(resp) if !resp.is_success() => map_error(&resp),
        Ok(resp) => match resp.json::<Found>() {
            Some(found) if found.charges.is_empty() => {
                outcome::never_charged("no charge carries this reference")
            }
            Some(found) => map_charge(&found.charges[0]),
            None => outcome::unknown("unreadable answer"),
        },
    }
}

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        charge(&config, &request)
    }

    fn status(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        status(&config, &request)
    }
}

paynode_guest::export_adapter!(Component);
