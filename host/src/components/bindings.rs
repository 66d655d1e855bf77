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
