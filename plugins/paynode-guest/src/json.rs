//! Requests and answers over the host `http` import. Credentials never
//! enter the guest: a header carries `{{secret:NAME}}` and the host puts
//! the value in, where the activation's egress policy binds it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{http, HttpError, Request, Response};

/// `Authorization: Bearer {{secret:NAME}}`.
pub fn bearer(secret: &str) -> (String, String) {
    (
        "Authorization".into(),
        format!("Bearer {{{{secret:{secret}}}}}"),
    )
}

/// A header pair.
pub fn header(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

/// `POST url` with a JSON body.
pub fn post(url: String, mut headers: Vec<(String, String)>, body: &impl Serialize) -> Request {
    headers.push(header("Content-Type", "application/json"));
    Request {
        method: "POST".into(),
        url,
        headers,
        body: serde_json::to_vec(body).expect("JSON body serializes"),
    }
}

/// `POST url` with an `application/x-www-form-urlencoded` body; keys are
/// sent as written, values encoded.
pub fn post_form(
    url: String,
    mut headers: Vec<(String, String)>,
    fields: &[(&str, String)],
) -> Request {
    headers.push(header("Content-Type", "application/x-www-form-urlencoded"));
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    Request {
        method: "POST".into(),
        url,
        headers,
        body: body.into_bytes(),
    }
}

/// `GET url`.
pub fn get(url: String, headers: Vec<(String, String)>) -> Request {
    Request {
        method: "GET".into(),
        url,
        headers,
        body: Vec::new(),
    }
}

/// Sends through the host (which enforces the egress policy and caps):
/// the 1.0.0 `http` import; a 2.0.0 adapter sends with `v2::send`.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    http::send(request)
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..=299).contains(&self.status)
    }

    /// The body as `T`; None when it does not parse (callers decide what an
    /// unreadable answer means, usually `unknown`).
    pub fn json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Percent-encodes for form bodies and query strings: everything but ASCII
/// letters, digits and `-_.~`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_placeholders_and_encoded_values() {
        assert_eq!(bearer("psp_api_key").1, "Bearer {{secret:psp_api_key}}");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        let r = post_form(
            "u".into(),
            vec![],
            &[("a[b]", "x y".into()), ("c", "1".into())],
        );
        assert_eq!(r.body, b"a[b]=x%20y&c=1");
        let r = post(
            "u".into(),
            vec![bearer("k")],
            &serde_json::json!({ "n": 1 }),
        );
        assert_eq!(r.body, br#"{"n":1}"#);
        assert_eq!(r.headers.len(), 2);
    }
}
