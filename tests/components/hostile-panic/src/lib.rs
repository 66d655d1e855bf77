//! Hostile retry policy: `decide` panics (a trap, as guests abort on panic).

// The generated export glue takes one argument per flattened field.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "policy",
    path: "../../../wit/retry-policy",
});

struct Hostile;

impl Guest for Hostile {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-panic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn decide(_config: Config, context: RetryContext) -> Decision {
        panic!(
            "hostile-panic: refusing to decide for {} attempt {}",
            context.payment_order_id, context.attempt
        )
    }
}

export!(Hostile);
