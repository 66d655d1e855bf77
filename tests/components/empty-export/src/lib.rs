//! Baseline PSP adapter for benchmarks: `charge` and `status` return
//! `succeeded("x")` at once, without using any import.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "adapter",
    path: "../../../wit/psp-adapter",
});

struct Empty;

impl Guest for Empty {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "empty-export".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Succeeded("x".into())
    }

    fn status(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Succeeded("x".into())
    }
}

export!(Empty);
