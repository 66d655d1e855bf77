//! A retry policy to start from: a fixed delay (`delay-ms`, default 1000)
//! for up to `max-retries` retries (default 5), then give up. The host
//! clamps delays and caps attempts whatever a policy answers.

#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "policy", path: "../../wit/retry-policy" });

struct Component;

fn number(config: &[(String, String)], key: &str, default: u64) -> u64 {
    config
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn decide(config: Vec<(String, String)>, context: RetryContext) -> Decision {
        let max_retries = number(&config, "max-retries", 5);
        if u64::from(context.attempt) > max_retries {
            return Decision::GiveUp(format!("max retries ({max_retries}) exhausted"));
        }
        Decision::RetryAfter(number(&config, "delay-ms", 1_000))
    }
}

export!(Component);
