//! Host bindings generated from the WIT worlds in `wit/` (the source of truth).

/// `paynode:psp-adapter/adapter`: the HTTP import is async so a PSP round
/// trip never blocks an executor thread.
pub mod adapter {
    wasmtime::component::bindgen!({
        path: "../wit/psp-adapter",
        world: "adapter",
        imports: {
            "paynode:psp-adapter/http.send": async,
            "paynode:psp-adapter/http.delay": async,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// `paynode:psp-adapter/adapter@2.0.0`: v1 plus refunds, notifications and
/// the HMAC import. Its `types` interface is v1's unchanged, so charge
/// requests and outcomes are the same Rust types for both versions (the
/// component model checks records structurally, not by package).
pub mod adapter_v2 {
    wasmtime::component::bindgen!({
        path: "../wit/psp-adapter-v2",
        world: "adapter",
        imports: {
            "paynode:psp-adapter/http.send": async,
            "paynode:psp-adapter/http.delay": async,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "paynode:psp-adapter/types": super::adapter::paynode::psp_adapter::types,
        },
    });
}

/// `paynode:retry-policy/policy`.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit/retry-policy",
        world: "policy",
        exports: { default: async },
    });
}

/// `paynode:posting-rules/rules`.
pub mod rules {
    wasmtime::component::bindgen!({
        path: "../wit/posting-rules",
        world: "rules",
        exports: { default: async },
    });
}

/// `paynode:posting-rules/rules@2.0.0`: v1 plus `post-refund`; `types` is
/// v1's unchanged.
pub mod rules_v2 {
    wasmtime::component::bindgen!({
        path: "../wit/posting-rules-v2",
        world: "rules",
        exports: { default: async },
        with: {
            "paynode:posting-rules/types": super::rules::paynode::posting_rules::types,
        },
    });
}
