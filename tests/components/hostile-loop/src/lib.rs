//! Hostile PSP adapter: `charge` never returns (burns CPU forever). The host
//! must stop it with its fuel / epoch budget.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "adapter",
    path: "../../../wit/psp-adapter",
});

use paynode::psp_adapter::types::Failure;

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-loop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(_config: Config, request: ChargeRequest) -> Outcome {
        let mut x = u64::from(request.attempt);
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    fn status(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Transient(Failure {
            code: "not_found".into(),
            message: "hostile-loop never charges".into(),
        })
    }
}

export!(Hostile);
