//! Hostile PSP adapter: `charge` allocates and touches 1 MiB chunks forever.
//! The host must stop it with its memory limit (the guest then traps).

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
            name: "hostile-memory".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(_config: Config, _request: ChargeRequest) -> Outcome {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Filled with non-zero bytes so every page is really touched.
            let chunk = vec![0xA5u8; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
    }

    fn status(_config: Config, _request: ChargeRequest) -> Outcome {
        Outcome::Transient(Failure {
            code: "not_found".into(),
            message: "hostile-memory never charges".into(),
        })
    }
}

export!(Hostile);
