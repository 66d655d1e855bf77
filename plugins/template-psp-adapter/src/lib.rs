//! A PSP adapter to start from. It answers every charge itself; a real
//! adapter builds the PSP's request, sends it with `http::send` (the host
//! enforces the allow-list and fills `{{secret:NAME}}` placeholders), and
//! maps the answer: an explicit success or refusal only; anything unclear,
//! a timeout included, is `unknown`.

#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "adapter", path: "../../wit/psp-adapter" });

use paynode::psp_adapter::log::{write, Level};
use paynode::psp_adapter::types::Failure;

struct Component;

fn setting<'a>(config: &'a [(String, String)], key: &str, default: &'a str) -> &'a str {
    config
        .iter()
        .find(|(k, _)| k == key)
        .map_or(default, |(_, v)| v.as_str())
}

fn answer(config: &[(String, String)], request: &ChargeRequest) -> Outcome {
    if request.amount.quantity <= 0 {
        return Outcome::Declined(Failure {
            code: "invalid_amount".into(),
            message: "amount must be positive".into(),
        });
    }
    let prefix = setting(config, "reference-prefix", "ref");
    Outcome::Succeeded(format!("{prefix}-{}", request.idempotency_key))
}

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        write(
            Level::Debug,
            &format!(
                "charge {} attempt {}",
                request.payment_order_id, request.attempt
            ),
        );
        answer(&config, &request)
    }

    fn status(config: Vec<(String, String)>, request: ChargeRequest) -> Outcome {
        answer(&config, &request)
    }
}

export!(Component);
