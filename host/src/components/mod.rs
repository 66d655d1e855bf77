//! The component platform: WIT bindings, the sandboxed runtime, host imports,
//! output invariants, the registry with hot swap, and the per-plugin harness.
//!
//! Recipe (wasmtime's): one `Engine` with the pooling allocator; per
//! component version a compiled `Component` and an `InstancePre`, cached on
//! disk by sha256; a fresh `Store` per call with fuel, a memory limiter and a
//! wall-clock cap, so one call can never affect another.

pub mod bindings;
pub mod egress;
pub mod egress_policy;
pub mod error;
pub mod harness;
pub mod host_imports;
pub mod host_imports_v2;
pub mod http_script;
pub mod invariants;
pub mod posting;
pub mod registry;
pub mod runtime;
pub mod scrub;
pub mod slot;

pub use error::PluginError;
pub use runtime::{Loaded, Runtime};
pub use slot::Slot;
