//! Pure part of the Stripe adapter: wire types, request fields and the
//! mapping of Stripe's answers to outcomes. No host calls here.

use std::collections::BTreeMap;

use paynode_guest::json::encode;
use paynode_guest::table::{Rule, Table, Verdict};
use paynode_guest::v2::RefundRequest;
use paynode_guest::{outcome, ChargeRequest, Outcome, Response};
use serde::Deserialize;

/// Error types or codes after which Stripe certainly did not charge, so a
/// retry with the same idempotency key is safe.
pub const TRANSIENT_ERRORS: &[&str] = &[
    "api_error",
    "api_connection_error",
    "rate_limit_error",
    "idempotency_error",
    "service_unavailable",
    "network_error",
    "gateway_error",
];

/// Non-2xx answers; any other status (1xx, 3xx) is `unknown`.
const ERRORS: Table = Table(&[
    Rule::new(429..=429, Verdict::Transient).default_code("rate_limit_error"),
    Rule::new(500..=599, Verdict::Transient),
    Rule::new(400..=499, Verdict::Transient).codes(TRANSIENT_ERRORS),
    Rule::new(400..=499, Verdict::Declined),
]);

/// Non-2xx answers to a refund. Only Stripe's explicit refusals are
/// final; a 429 was not processed; a 5xx or anything else may have
/// refunded, so it is `unknown` (settled by `refund-status`).
const REFUND_ERRORS: Table = Table(&[
    Rule::new(429..=429, Verdict::Transient).default_code("rate_limit_error"),
    Rule::new(400..=499, Verdict::Declined).codes(&["card_error", "invalid_request_error"]),
    Rule::new(500..=599, Verdict::Unknown),
]);

/// The values Stripe takes as a refund's `reason`; any other reason goes
/// only to the metadata.
pub const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

/// Stripe's limit on a metadata value.
const METADATA_MAX_CHARS: usize = 500;

/// Where paynode's idempotency key goes in a charge's or refund's metadata.
pub const KEY_FIELD: &str = "paynode_key";

pub type Metadata = Option<BTreeMap<String, String>>;

/// The idempotency key paynode put in `metadata`, if any.
pub fn paynode_key(metadata: &Metadata) -> Option<&str> {
    metadata.as_ref()?.get(KEY_FIELD).map(String::as_str)
}

/// A PaymentIntent, reduced to what the mapping needs.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    #[serde(default)]
    pub id: Option<String>,
    pub status: String,
    #[serde(default)]
    pub last_payment_error: Option<ApiError>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// A Refund, reduced to what the mapping needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    #[serde(default)]
    pub id: Option<String>,
    pub status: String,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// A page of `GET /v1/refunds`.
#[derive(Debug, Deserialize)]
pub struct RefundList {
    pub data: Vec<Refund>,
    pub has_more: bool,
}

/// Stripe's error object (`{"error": {...}}`, also `last_payment_error`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Deserialize)]
pub struct SearchResult {
    pub data: Vec<PaymentIntent>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Form fields of `POST /v1/payment_intents`.
pub fn charge_fields(req: &ChargeRequest, payment_method: &str) -> Vec<(&'static str, String)> {
    vec![
        ("amount", req.amount.quantity.to_string()),
        ("currency", req.amount.currency.to_ascii_lowercase()),
        ("confirm", "true".into()),
        ("payment_method", payment_method.into()),
        ("metadata[payment_order_id]", req.payment_order_id.clone()),
        ("metadata[paynode_key]", req.idempotency_key.clone()),
    ]
}

/// Form fields of `POST /v1/refunds`: the charge's PaymentIntent, the
/// amount (in the charge's currency) and paynode's ids in the metadata,
/// where `refund-status` finds the refund by its key.
pub fn refund_fields(req: &RefundRequest) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("payment_intent", req.charge_reference.clone()),
        ("amount", req.amount.quantity.to_string()),
        ("metadata[paynode_key]", req.idempotency_key.clone()),
        ("metadata[refund_id]", req.refund_id.clone()),
        ("metadata[payment_order_id]", req.payment_order_id.clone()),
    ];
    let reason = req.reason.trim();
    if REFUND_REASONS.contains(&reason) {
        fields.push(("reason", reason.to_string()));
    }
    if !reason.is_empty() {
        let note = reason.chars().take(METADATA_MAX_CHARS).collect();
        fields.push(("metadata[reason]", note));
    }
    fields
}

/// The refunds of one PaymentIntent (Stripe's maximum page).
pub fn refunds_url(base_url: &str, payment_intent: &str) -> String {
    format!(
        "{}/v1/refunds?payment_intent={}&limit=100",
        base_url.trim_end_matches('/'),
        encode(payment_intent)
    )
}

/// Search query finding the PaymentIntent created with this key, in the
/// Stripe search language (quotes and backslashes escaped), URL-encoded.
pub fn search_url(base_url: &str, idempotency_key: &str) -> String {
    let escaped = idempotency_key.replace('\\', "\\\\").replace('\'', "\\'");
    let query = format!("metadata['paynode_key']:'{escaped}'");
    format!(
        "{}/v1/payment_intents/search?query={}",
        base_url.trim_end_matches('/'),
        encode(&query)
    )
}

/// Maps one PaymentIntent (from a charge answer or a search hit).
pub fn map_intent(pi: &PaymentIntent) -> Outcome {
    let id = pi.id.as_deref().unwrap_or("");
    match pi.status.as_str() {
        "succeeded" if id.is_empty() => {
            outcome::unknown("PSP reported success without a payment intent id")
        }
        "succeeded" => outcome::succeeded(id),
        "requires_payment_method" | "canceled" => {
            let err = pi.last_payment_error.clone().unwrap_or_default();
            let code = non_empty(&err.decline_code)
                .or(non_empty(&err.code))
                .unwrap_or(&pi.status);
            let message = non_empty(&err.message)
                .map(str::to_string)
                .unwrap_or_else(|| format!("payment intent {id} is {}", pi.status));
            outcome::declined(code, message)
        }
        "processing" | "requires_action" | "requires_confirmation" | "requires_capture" => {
            outcome::unknown(format!("payment intent {id} is {}", pi.status))
        }
        other => outcome::unknown(format!(
            "payment intent {id} has unexpected status {other:?}"
        )),
    }
}

/// Maps one Refund (from a refund answer, a lookup or an event).
pub fn map_refund(refund: &Refund) -> Outcome {
    let id = refund.id.as_deref().unwrap_or("");
    let status = refund.status.as_str();
    match status {
        "succeeded" if id.is_empty() => outcome::unknown("PSP reported a refund without its id"),
        "succeeded" => outcome::succeeded(id),
        "failed" | "canceled" => {
            let code = non_empty(&refund.failure_reason).unwrap_or(status);
            outcome::declined(code, format!("refund {id} is {status}"))
        }
        "pending" | "requires_action" => outcome::unknown(format!("refund {id} is {status}")),
        other => outcome::unknown(format!("refund {id} has unexpected status {other:?}")),
    }
}

/// Maps a non-2xx answer through [`ERRORS`]; a decline prefers Stripe's
/// `decline_code`.
pub fn map_error_status(status: u16, body: &[u8]) -> Outcome {
    map_error(&ERRORS, status, body)
}

fn map_error(table: &Table, status: u16, body: &[u8]) -> Outcome {
    let err = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let message = non_empty(&err.message)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status} from PSP"));
    let code = non_empty(&err.code).or(non_empty(&err.kind));
    let codes: Vec<&str> = [&err.kind, &err.code]
        .into_iter()
        .filter_map(non_empty)
        .collect();
    let code_for = |verdict| match verdict {
        Verdict::Declined => non_empty(&err.decline_code).or(code).map(str::to_string),
        _ => code.map(str::to_string),
    };
    table.outcome(status, &codes, code_for, message)
}

/// Maps the answer to `POST /v1/payment_intents`.
pub fn map_charge_response(resp: &Response) -> Outcome {
    if !resp.is_success() {
        return map_error_status(resp.status, &resp.body);
    }
    match resp.json::<PaymentIntent>() {
        Some(pi) => map_intent(&pi),
        None => outcome::unknown(format!("unparseable PSP answer (HTTP {})", resp.status)),
    }
}

/// Maps the answer to the PaymentIntent search by idempotency key.
pub fn map_search_response(resp: &Response) -> Outcome {
    if !resp.is_success() {
        return map_error_status(resp.status, &resp.body);
    }
    match resp.json::<SearchResult>() {
        Some(found) => match found.data.first() {
            Some(pi) => map_intent(pi),
            // Stripe's search never saw a charge with this key.
            None => outcome::never_charged("no payment intent carries this idempotency key"),
        },
        None => outcome::unknown(format!(
            "unparseable PSP search answer (HTTP {})",
            resp.status
        )),
    }
}

/// Maps the answer to `POST /v1/refunds`.
pub fn map_refund_response(resp: &Response) -> Outcome {
    if !resp.is_success() {
        return map_error(&REFUND_ERRORS, resp.status, &resp.body);
    }
    match resp.json::<Refund>() {
        Some(refund) => map_refund(&refund),
        None => outcome::unknown(format!("unparseable PSP answer (HTTP {})", resp.status)),
    }
}

/// Maps the PaymentIntent's refund list to the refund carrying `key`.
/// "Never refunded" only from a complete, readable list; any other answer
/// says nothing about the refund.
pub fn map_refund_lookup(resp: &Response, key: &str) -> Outcome {
    if !resp.is_success() {
        return outcome::unknown(format!("refund lookup answered HTTP {}", resp.status));
    }
    let Some(list) = resp.json::<RefundList>() else {
        return outcome::unknown(format!("unparseable refund list (HTTP {})", resp.status));
    };
    match list
        .data
        .iter()
        .find(|r| paynode_key(&r.metadata) == Some(key))
    {
        Some(refund) => map_refund(refund),
        None if list.has_more => outcome::unknown("refund not among the first 100 of its charge"),
        None => outcome::never_refunded("no refund carries this idempotency key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outcome::{declined, transient};

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn charge(status: u16, body: &str) -> Outcome {
        map_charge_response(&resp(status, body))
    }

    #[test]
    fn builds_search_url() {
        assert_eq!(
            search_url("http://psp.test/", "k-1"),
            "http://psp.test/v1/payment_intents/search?query=metadata%5B%27paynode_key%27%5D%3A%27k-1%27"
        );
        assert_eq!(
            search_url("http://psp.test", "a'b"),
            "http://psp.test/v1/payment_intents/search?query=metadata%5B%27paynode_key%27%5D%3A%27a%5C%27b%27"
        );
    }

    #[test]
    fn intents() {
        let ok = r#"{"id":"pi_123","object":"payment_intent","status":"succeeded"}"#;
        assert_eq!(charge(200, ok), Outcome::Succeeded("pi_123".into()));
        assert!(matches!(
            charge(200, r#"{"status":"succeeded"}"#),
            Outcome::Unknown(_)
        ));
        let funds = r#"{"id":"pi_1","status":"requires_payment_method","last_payment_error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        assert_eq!(
            charge(200, funds),
            declined("insufficient_funds", "Your card has insufficient funds.")
        );
        let expired = r#"{"id":"pi_1","status":"requires_payment_method","last_payment_error":{"code":"expired_card","message":"Expired."}}"#;
        assert_eq!(charge(200, expired), declined("expired_card", "Expired."));
        let canceled = r#"{"id":"pi_2","status":"canceled","last_payment_error":null}"#;
        assert_eq!(
            charge(200, canceled),
            declined("canceled", "payment intent pi_2 is canceled")
        );
        for s in [
            "processing",
            "requires_action",
            "requires_confirmation",
            "requires_capture",
            "new",
        ] {
            let body = format!(r#"{{"id":"pi_9","status":"{s}"}}"#);
            assert!(
                matches!(charge(200, &body), Outcome::Unknown(m) if m.contains(s)),
                "{s}"
            );
        }
        for body in ["", "not json", "{}", r#"{"status": 5}"#] {
            assert!(matches!(charge(200, body), Outcome::Unknown(_)));
        }
    }

    #[test]
    fn error_statuses() {
        let card = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined."}}"#;
        assert_eq!(
            charge(402, card),
            declined("generic_decline", "Your card was declined.")
        );
        let key = r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key"}}"#;
        assert_eq!(
            charge(401, key),
            declined("invalid_request_error", "Invalid API Key")
        );
        assert_eq!(
            charge(404, "nope"),
            declined("http_404", "HTTP 404 from PSP")
        );
        assert_eq!(
            charge(429, ""),
            transient("rate_limit_error", "HTTP 429 from PSP")
        );
        assert_eq!(
            charge(500, "<html>"),
            transient("http_500", "HTTP 500 from PSP")
        );
        let down = r#"{"error":{"type":"api_error","message":"Service down"}}"#;
        assert_eq!(charge(503, down), transient("api_error", "Service down"));
        for t in TRANSIENT_ERRORS {
            let body = format!(r#"{{"error":{{"type":"{t}","message":"m"}}}}"#);
            assert_eq!(charge(400, &body), transient(*t, "m"));
            let body = format!(
                r#"{{"error":{{"type":"invalid_request_error","code":"{t}","message":"m"}}}}"#
            );
            assert_eq!(charge(409, &body), transient(*t, "m"));
        }
        let in_use = r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use","message":"m"}}"#;
        assert_eq!(
            charge(400, in_use),
            transient("idempotency_key_in_use", "m")
        );
        assert!(matches!(charge(302, ""), Outcome::Unknown(_)));
    }

    #[test]
    fn search_answers() {
        let search = |status, body: &str| map_search_response(&resp(status, body));
        let found =
            r#"{"data":[{"id":"pi_7","status":"succeeded"},{"id":"pi_8","status":"canceled"}]}"#;
        assert_eq!(search(200, found), Outcome::Succeeded("pi_7".into()));
        let empty = r#"{"object":"search_result","data":[]}"#;
        let none = transient(
            "not_found",
            "no payment intent carries this idempotency key",
        );
        assert_eq!(search(200, empty), none);
        assert!(matches!(search(200, "{}"), Outcome::Unknown(_)));
        assert_eq!(search(500, ""), transient("http_500", "HTTP 500 from PSP"));
        let processing = r#"{"data":[{"id":"pi_7","status":"processing"}]}"#;
        assert!(matches!(search(200, processing), Outcome::Unknown(_)));
    }

    #[test]
    fn refunds() {
        let refund = |status, body: &str| map_refund_response(&resp(status, body));
        let ok = r#"{"id":"re_1","object":"refund","status":"succeeded"}"#;
        assert_eq!(refund(200, ok), Outcome::Succeeded("re_1".into()));
        assert!(matches!(
            refund(200, r#"{"status":"succeeded"}"#),
            Outcome::Unknown(_)
        ));
        let failed = r#"{"id":"re_2","status":"failed","failure_reason":"lost_or_stolen_card"}"#;
        assert_eq!(
            refund(200, failed),
            declined("lost_or_stolen_card", "refund re_2 is failed")
        );
        let canceled = r#"{"id":"re_3","status":"canceled"}"#;
        assert_eq!(
            refund(200, canceled),
            declined("canceled", "refund re_3 is canceled")
        );
        for s in ["pending", "requires_action", "new"] {
            let body = format!(r#"{{"id":"re_4","status":"{s}"}}"#);
            assert!(matches!(refund(200, &body), Outcome::Unknown(m) if m.contains(s)));
        }
        for body in ["", "{}", "[]"] {
            assert!(matches!(refund(200, body), Outcome::Unknown(_)));
        }
    }

    #[test]
    fn refund_errors_are_final_only_when_stripe_says_so() {
        let refund = |status, body: &str| map_refund_response(&resp(status, body));
        let already = r#"{"error":{"type":"invalid_request_error","code":"charge_already_refunded","message":"Already refunded."}}"#;
        assert_eq!(
            refund(400, already),
            declined("charge_already_refunded", "Already refunded.")
        );
        let card = r#"{"error":{"type":"card_error","message":"m"}}"#;
        assert_eq!(refund(402, card), declined("card_error", "m"));
        assert_eq!(
            refund(429, ""),
            transient("rate_limit_error", "HTTP 429 from PSP")
        );
        let api = r#"{"error":{"type":"api_error","message":"Service down"}}"#;
        assert_eq!(refund(500, api), Outcome::Unknown("Service down".into()));
        let in_use = r#"{"error":{"type":"idempotency_error","message":"m"}}"#;
        for (status, body) in [(503, ""), (409, in_use), (404, "nope"), (302, "")] {
            assert!(
                matches!(refund(status, body), Outcome::Unknown(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn refund_lookup() {
        let lookup = |status, body: &str| map_refund_lookup(&resp(status, body), "rk-1");
        let list = r#"{"object":"list","has_more":false,"data":[
            {"id":"re_0","status":"succeeded","metadata":{"paynode_key":"rk-0"}},
            {"id":"re_9","status":"succeeded","metadata":null},
            {"id":"re_1","status":"succeeded","metadata":{"paynode_key":"rk-1"}}]}"#;
        assert_eq!(lookup(200, list), Outcome::Succeeded("re_1".into()));
        let none = r#"{"has_more":false,"data":[{"id":"re_0","status":"succeeded","metadata":{"paynode_key":"rk-0"}}]}"#;
        let never = transient("not_found", "no refund carries this idempotency key");
        assert_eq!(lookup(200, none), never);
        assert_eq!(lookup(200, r#"{"has_more":false,"data":[]}"#), never);
        let more = r#"{"has_more":true,"data":[]}"#;
        for (status, body) in [
            (200, more),
            (200, r#"{"data":[]}"#),
            (200, ""),
            (500, ""),
            (404, ""),
        ] {
            assert!(
                matches!(lookup(status, body), Outcome::Unknown(_)),
                "{status} {body}"
            );
        }
        let pending = r#"{"has_more":false,"data":[{"id":"re_1","status":"pending","metadata":{"paynode_key":"rk-1"}}]}"#;
        assert!(matches!(lookup(200, pending), Outcome::Unknown(_)));
    }
}
