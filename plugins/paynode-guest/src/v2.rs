//! The psp-adapter 2.0.0 world (`wit/psp-adapter-v2`): refunds, PSP
//! notifications and the host-held HMAC. Behind the `v2` feature, so a
//! 1.0.0 adapter (and the SDK copy `paynode plugin new` vendors) never
//! compiles it; the feature only adds this module.
//!
//! `types` and the `http` and `log` records are v1's unchanged, so they
//! are the crate-root types here too and [`crate::outcome`],
//! [`crate::table`], [`crate::money`] and [`Response`]'s helpers work for
//! both worlds. What *calls* the host is per world: a 2.0.0 adapter sends
//! with [`send`] and logs with [`debug`] from this module (the crate-root
//! ones import the 1.0.0 interfaces, which the host refuses a 2.0.0
//! component), and waits with [`delay`]. It implements [`Guest`] and calls
//! `paynode_guest::v2::export_adapter_v2!(MyAdapter);`.

/// The generated 2.0.0 bindings, reusing the crate-root types.
pub mod bindings {
    #![allow(clippy::too_many_arguments)]

    wit_bindgen::generate!({
        // `wit/adapter-v2.wit`: the 2.0.0 world `adapter`, renamed.
        world: "paynode:guest-sdk/adapter-v2",
        path: ["../../wit/psp-adapter-v2", "wit"],
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export_adapter_v2",
        generate_all,
        default_bindings_module: "paynode_guest::v2::bindings",
        with: {
            "paynode:psp-adapter/types@2.0.0": paynode_guest::bindings::paynode::psp_adapter::types,
            "paynode:psp-adapter/http@2.0.0/request": paynode_guest::Request,
            "paynode:psp-adapter/http@2.0.0/response": paynode_guest::Response,
            "paynode:psp-adapter/http@2.0.0/http-error": paynode_guest::HttpError,
            "paynode:psp-adapter/log@2.0.0/level": paynode_guest::Level,
        },
    });
}

pub use bindings::paynode::psp_adapter::notifications::{
    Incoming, Notification, NotificationKind, Rejection,
};
pub use bindings::paynode::psp_adapter::refunds::RefundRequest;
pub use bindings::{export_adapter_v2, Guest};

use bindings::paynode::psp_adapter::{crypto, http, log};

use crate::{HttpError, Level, Request, Response};

/// Sends through the host's 2.0.0 `http` import.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    http::send(request)
}

/// Holds the call `ms` milliseconds through the host's 2.0.0 `http.delay`
/// (simulators only: a guest cannot sleep; the host caps the wait).
pub fn delay(ms: u32) {
    http::delay(ms);
}

/// Writes a debug log line through the 2.0.0 `log` import.
pub fn debug(message: &str) {
    log::write(Level::Debug, message);
}

/// HMAC-SHA256 of `message` under the host secret `secret_name`; the
/// secret never enters the guest.
pub fn hmac_sha256(secret_name: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    crypto::hmac_sha256(secret_name, message)
}

impl Incoming {
    /// The first header named `name` (ASCII case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// Lowercase hex, for comparing a MAC with a signature header.
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit, so timing does not tell how much of a
/// signature matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_helpers() {
        assert_eq!(hex_lower(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let incoming = Incoming {
            headers: vec![("Stripe-Signature".into(), " t=1 ".into())],
            body: vec![],
            received_at: 0,
        };
        assert_eq!(incoming.header("stripe-signature"), Some("t=1"));
        assert_eq!(incoming.header("x"), None);
    }
}
