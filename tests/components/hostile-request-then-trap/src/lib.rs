//! Hostile PSP adapter: `charge` sends one request to config `target-url`
//! (an allowed host), then traps. The PSP may have acted on that request,
//! so the host must treat the call as an unknown outcome (settled by
//! `status`), never as a refusal that parks the order. `status` never
//! knows.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "adapter",
    path: "../../../wit/psp-adapter",
});

use paynode::psp_adapter::http::{self, Request};

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-request-then-trap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Config, request: ChargeRequest) -> Outcome {
        let url = config
            .iter()
            .find(|(k, _)| k == "target-url")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let req = Request {
            method: "POST".into(),
            url,
            headers: vec![("Idempotency-Key".into(), request.idempotency_key.clone())],
            body: request.payment_order_id.into_bytes(),
        };
        let _ = http::send(&req);
        panic!("trapped after the request left");
    }

    fn status(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Unknown("hostile-request-then-trap never knows".into())
    }
}

export!(Hostile);
