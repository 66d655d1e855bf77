//! Pure part of the Stripe adapter: wire types, request encoding and the
//! mapping of Stripe's answers to outcomes. No host calls here.

use serde::Deserialize;

use crate::paynode::psp_adapter::http::{HttpError, Response};
use crate::paynode::psp_adapter::types::Failure;
use crate::Outcome;

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

/// A PaymentIntent, reduced to what the mapping needs.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    #[serde(default)]
    pub id: Option<String>,
    pub status: String,
    #[serde(default)]
    pub last_payment_error: Option<ApiError>,
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

/// PaymentIntent statuses the adapter distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStatus {
    Succeeded,
    RequiresPaymentMethod,
    Canceled,
    Processing,
    RequiresAction,
    RequiresConfirmation,
    RequiresCapture,
    Other,
}

impl IntentStatus {
    pub fn from_wire(s: &str) -> Self {
        match s {
            "succeeded" => IntentStatus::Succeeded,
            "requires_payment_method" => IntentStatus::RequiresPaymentMethod,
            "canceled" => IntentStatus::Canceled,
            "processing" => IntentStatus::Processing,
            "requires_action" => IntentStatus::RequiresAction,
            "requires_confirmation" => IntentStatus::RequiresConfirmation,
            "requires_capture" => IntentStatus::RequiresCapture,
            _ => IntentStatus::Other,
        }
    }
}

fn failure(code: impl Into<String>, message: impl Into<String>) -> Failure {
    Failure {
        code: code.into(),
        message: message.into(),
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Percent-encodes a value for `application/x-www-form-urlencoded` bodies
/// and URL query strings: everything but ASCII letters, digits and `-_.~`.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Form body of `POST /v1/payment_intents`. Keys are literal, values encoded.
pub fn charge_form(
    amount: i64,
    currency: &str,
    payment_method: &str,
    payment_order_id: &str,
    idempotency_key: &str,
) -> String {
    let fields: [(&str, String); 6] = [
        ("amount", amount.to_string()),
        ("currency", currency.to_ascii_lowercase()),
        ("confirm", "true".to_string()),
        ("payment_method", payment_method.to_string()),
        ("metadata[payment_order_id]", payment_order_id.to_string()),
        ("metadata[paynode_key]", idempotency_key.to_string()),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
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
    match IntentStatus::from_wire(&pi.status) {
        IntentStatus::Succeeded => {
            if id.is_empty() {
                Outcome::Unknown("PSP reported success without a payment intent id".into())
            } else {
                Outcome::Succeeded(id.to_string())
            }
        }
        IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => {
            let err = pi.last_payment_error.clone().unwrap_or_default();
            let code = non_empty(&err.decline_code)
                .or(non_empty(&err.code))
                .unwrap_or(&pi.status)
                .to_string();
            let message = non_empty(&err.message)
                .map(str::to_string)
                .unwrap_or_else(|| format!("payment intent {id} is {}", pi.status));
            Outcome::Declined(failure(code, message))
        }
        IntentStatus::Processing
        | IntentStatus::RequiresAction
        | IntentStatus::RequiresConfirmation
        | IntentStatus::RequiresCapture => {
            Outcome::Unknown(format!("payment intent {id} is {}", pi.status))
        }
        IntentStatus::Other => Outcome::Unknown(format!(
            "payment intent {id} has unexpected status {:?}",
            pi.status
        )),
    }
}

/// Maps a non-2xx answer.
pub fn map_error_status(status: u16, body: &[u8]) -> Outcome {
    let err = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let message = non_empty(&err.message)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status} from PSP"));
    let code = non_empty(&err.code).or(non_empty(&err.kind));
    let is_transient_error = [&err.kind, &err.code]
        .into_iter()
        .filter_map(non_empty)
        .any(|c| TRANSIENT_ERRORS.contains(&c));
    match status {
        429 => Outcome::Transient(failure(code.unwrap_or("rate_limit_error"), message)),
        500..=599 => Outcome::Transient(failure(
            code.map(str::to_string)
                .unwrap_or_else(|| format!("http_{status}")),
            message,
        )),
        400..=499 if is_transient_error => {
            Outcome::Transient(failure(code.unwrap_or("api_error"), message))
        }
        400..=499 => {
            let code = non_empty(&err.decline_code)
                .or(code)
                .map(str::to_string)
                .unwrap_or_else(|| format!("http_{status}"));
            Outcome::Declined(failure(code, message))
        }
        // 1xx/3xx (and 2xx, which callers handle): the request was sent and
        // the answer says nothing certain.
        _ => Outcome::Unknown(format!("unexpected HTTP {status} from PSP")),
    }
}

fn is_success(status: u16) -> bool {
    (200..=299).contains(&status)
}

/// Maps the answer to `POST /v1/payment_intents`.
pub fn map_charge_response(resp: &Response) -> Outcome {
    if !is_success(resp.status) {
        return map_error_status(resp.status, &resp.body);
    }
    match serde_json::from_slice::<PaymentIntent>(&resp.body) {
        Ok(pi) => map_intent(&pi),
        Err(_) => Outcome::Unknown(format!("unparseable PSP answer (HTTP {})", resp.status)),
    }
}

/// Maps the answer to the PaymentIntent search by idempotency key.
pub fn map_search_response(resp: &Response) -> Outcome {
    if !is_success(resp.status) {
        return map_error_status(resp.status, &resp.body);
    }
    match serde_json::from_slice::<SearchResult>(&resp.body) {
        Ok(found) => match found.data.first() {
            Some(pi) => map_intent(pi),
            // Stripe never saw a charge with this key: retrying with the same
            // idempotency key is safe.
            None => Outcome::Transient(failure(
                "not_found",
                "no payment intent carries this idempotency key",
            )),
        },
        Err(_) => Outcome::Unknown(format!(
            "unparseable PSP search answer (HTTP {})",
            resp.status
        )),
    }
}

/// Maps a failed exchange. `unknown` reasons are fixed strings (the host's
/// detail goes to the log line): they are compared in fixtures.
pub fn map_http_error(err: &HttpError) -> Outcome {
    match err {
        HttpError::Timeout => Outcome::Unknown("timeout waiting for the PSP".into()),
        HttpError::FailedAfterSend(_) => {
            Outcome::Unknown("exchange with the PSP broke after sending".into())
        }
        HttpError::ConnectFailed(m) => {
            Outcome::Transient(failure("api_connection_error", m.as_str()))
        }
        HttpError::Refused(m) => Outcome::Transient(failure("host_refused", m.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn transient(code: &str, message: &str) -> Outcome {
        Outcome::Transient(failure(code, message))
    }

    fn declined(code: &str, message: &str) -> Outcome {
        Outcome::Declined(failure(code, message))
    }

    #[test]
    fn encodes_form_values() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("po-1_x.y~"), "po-1_x.y~");
        assert_eq!(
            charge_form(1000, "EUR", "pm_card_visa", "po 1", "k-1"),
            "amount=1000&currency=eur&confirm=true&payment_method=pm_card_visa&metadata[payment_order_id]=po%201&metadata[paynode_key]=k-1"
        );
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
    fn succeeded_intent() {
        let r = resp(
            200,
            r#"{"id":"pi_123","object":"payment_intent","status":"succeeded","amount":1000}"#,
        );
        assert_eq!(map_charge_response(&r), Outcome::Succeeded("pi_123".into()));
        let r = resp(200, r#"{"status":"succeeded"}"#);
        assert!(matches!(map_charge_response(&r), Outcome::Unknown(_)));
    }

    #[test]
    fn declined_intents() {
        let r = resp(
            200,
            r#"{"id":"pi_1","status":"requires_payment_method","last_payment_error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            declined("insufficient_funds", "Your card has insufficient funds.")
        );
        let r = resp(
            200,
            r#"{"id":"pi_1","status":"requires_payment_method","last_payment_error":{"code":"expired_card","message":"Expired."}}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            declined("expired_card", "Expired.")
        );
        let r = resp(
            200,
            r#"{"id":"pi_2","status":"canceled","last_payment_error":null}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            declined("canceled", "payment intent pi_2 is canceled")
        );
    }

    #[test]
    fn in_doubt_intents_are_unknown() {
        for s in [
            "processing",
            "requires_action",
            "requires_confirmation",
            "requires_capture",
            "something_new",
        ] {
            let r = resp(200, &format!(r#"{{"id":"pi_9","status":"{s}"}}"#));
            assert!(
                matches!(map_charge_response(&r), Outcome::Unknown(m) if m.contains(s)),
                "{s}"
            );
        }
        assert_eq!(
            map_charge_response(&resp(200, r#"{"id":"pi_9","status":"processing"}"#)),
            Outcome::Unknown("payment intent pi_9 is processing".into())
        );
    }

    #[test]
    fn unparseable_success_is_unknown() {
        for body in ["", "not json", "{}", r#"{"status": 5}"#] {
            assert!(matches!(
                map_charge_response(&resp(200, body)),
                Outcome::Unknown(_)
            ));
        }
    }

    #[test]
    fn card_decline_402() {
        let r = resp(
            402,
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined."}}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            declined("generic_decline", "Your card was declined.")
        );
        let r = resp(
            400,
            r#"{"error":{"type":"invalid_request_error","code":"amount_too_small","message":"Amount must be at least 50 cents"}}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            declined("amount_too_small", "Amount must be at least 50 cents")
        );
        let r = resp(
            401,
            r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key"}}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            declined("invalid_request_error", "Invalid API Key")
        );
        assert_eq!(
            map_charge_response(&resp(404, "nope")),
            declined("http_404", "HTTP 404 from PSP")
        );
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient() {
        assert_eq!(
            map_charge_response(&resp(429, "")),
            transient("rate_limit_error", "HTTP 429 from PSP")
        );
        assert_eq!(
            map_charge_response(&resp(
                429,
                r#"{"error":{"type":"rate_limit_error","message":"Too many requests"}}"#
            )),
            transient("rate_limit_error", "Too many requests")
        );
        assert_eq!(
            map_charge_response(&resp(500, "<html>oops</html>")),
            transient("http_500", "HTTP 500 from PSP")
        );
        assert_eq!(
            map_charge_response(&resp(
                503,
                r#"{"error":{"type":"api_error","message":"Service down"}}"#
            )),
            transient("api_error", "Service down")
        );
    }

    #[test]
    fn transient_error_types_under_4xx() {
        for t in TRANSIENT_ERRORS {
            let r = resp(
                400,
                &format!(r#"{{"error":{{"type":"{t}","message":"m"}}}}"#),
            );
            assert_eq!(map_charge_response(&r), transient(t, "m"));
            let r = resp(
                409,
                &format!(
                    r#"{{"error":{{"type":"invalid_request_error","code":"{t}","message":"m"}}}}"#
                ),
            );
            assert_eq!(map_charge_response(&r), transient(t, "m"));
        }
        let r = resp(
            400,
            r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use","message":"m"}}"#,
        );
        assert_eq!(
            map_charge_response(&r),
            transient("idempotency_key_in_use", "m")
        );
    }

    #[test]
    fn other_statuses_are_unknown() {
        assert!(matches!(
            map_charge_response(&resp(302, "")),
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn http_errors() {
        assert_eq!(
            map_http_error(&HttpError::Timeout),
            Outcome::Unknown("timeout waiting for the PSP".into())
        );
        assert_eq!(
            map_http_error(&HttpError::FailedAfterSend("reset".into())),
            Outcome::Unknown("exchange with the PSP broke after sending".into())
        );
        assert_eq!(
            map_http_error(&HttpError::ConnectFailed("refused".into())),
            transient("api_connection_error", "refused")
        );
        assert_eq!(
            map_http_error(&HttpError::Refused("not allowed".into())),
            transient("host_refused", "not allowed")
        );
    }

    #[test]
    fn search_answers() {
        let found = resp(
            200,
            r#"{"object":"search_result","data":[{"id":"pi_7","status":"succeeded"},{"id":"pi_8","status":"canceled"}],"has_more":false}"#,
        );
        assert_eq!(
            map_search_response(&found),
            Outcome::Succeeded("pi_7".into())
        );
        let empty = resp(200, r#"{"object":"search_result","data":[]}"#);
        assert_eq!(
            map_search_response(&empty),
            transient(
                "not_found",
                "no payment intent carries this idempotency key"
            )
        );
        assert!(matches!(
            map_search_response(&resp(200, "{}")),
            Outcome::Unknown(_)
        ));
        assert_eq!(
            map_search_response(&resp(500, "")),
            transient("http_500", "HTTP 500 from PSP")
        );
        let processing = resp(200, r#"{"data":[{"id":"pi_7","status":"processing"}]}"#);
        assert!(matches!(
            map_search_response(&processing),
            Outcome::Unknown(_)
        ));
    }
}
