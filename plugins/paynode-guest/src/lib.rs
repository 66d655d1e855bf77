//! Guest SDK for paynode PSP adapters.
//!
//! It owns the bindings of the `adapter` world, so an adapter crate needs
//! neither `wit-bindgen` nor the WIT files: it implements [`Guest`] and
//! calls `paynode_guest::export_adapter!(MyAdapter);`. On top of the
//! bindings:
//!
//! - [`outcome`]: constructors, and the mapping of a failed exchange;
//! - [`table`]: a declarative HTTP status / error code → outcome table that
//!   says `unknown` unless the PSP was explicit;
//! - [`json`]: typed JSON (and form) requests and responses over the host
//!   `http` import, with `{{secret:NAME}}` placeholders for credentials;
//! - [`money`]: amount checks and decimal formatting by currency exponent;
//! - [`Settings`]: the activation's guest configuration;
//! - `v2` (feature `v2`): the 2.0.0 world (refunds, notifications, HMAC).

// Lets the generated bindings name this crate the same way inside and out.
extern crate self as paynode_guest;

/// The generated bindings (in a module of their own: the exported macros
/// land at the crate root, and must not meet their own re-exports there).
pub mod bindings {
    // The generated export glue takes one argument per flattened field.
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({
        world: "adapter",
        path: "../../wit/psp-adapter",
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export_adapter",
        default_bindings_module: "paynode_guest::bindings",
    });
}

#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod json;
pub mod money;
pub mod outcome;
pub mod table;
#[cfg(feature = "v2")]
pub mod v2;

pub use bindings::paynode::psp_adapter::http::{self, HttpError, Request, Response};
pub use bindings::paynode::psp_adapter::log::{self, Level};
pub use bindings::paynode::psp_adapter::types::{Failure, Money};
pub use bindings::{export_adapter, ChargeRequest, Config, Guest, Outcome, PluginInfo};

/// The activation's guest configuration (`--set key=value`), the last
/// value of a key winning, blank values counting as absent.
pub struct Settings<'a>(pub &'a [(String, String)]);

impl Settings<'_> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("config `{key}` is required"))
    }

    /// An http(s) base URL without its trailing slash.
    pub fn base_url(&self, key: &str) -> Result<String, String> {
        let url = self.require(key)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "config `{key}` must be an http(s) URL, not {url:?}"
            ));
        }
        Ok(url.trim_end_matches('/').to_string())
    }
}

/// Writes a log line (the host tags it with the plugin and trace).
pub fn debug(message: &str) {
    log::write(Level::Debug, message);
}
