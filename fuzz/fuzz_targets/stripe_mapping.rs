//! The Stripe-shaped adapter's response mapping (`psp-adapters/stripe`'s
//! pure `mapping.rs`, compiled natively): any status and body, for the
//! charge answer and the status search, maps to an outcome without
//! panicking, and a charge is `succeeded` only on a 2xx answer naming a
//! payment intent whose status is `succeeded`.

#![no_main]
#![allow(dead_code, clippy::too_many_arguments)]

use libfuzzer_sys::fuzz_target;

wit_bindgen::generate!({
    world: "adapter",
    path: "../wit/psp-adapter",
    additional_derives: [PartialEq, Eq],
});

#[path = "../../psp-adapters/stripe/src/mapping.rs"]
mod mapping;

use crate::paynode::psp_adapter::http::Response;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 700;
    let search = data[2] & 1 == 1;
    let response = Response {
        status,
        headers: vec![],
        body: data[3..].to_vec(),
    };
    let outcome = if search {
        mapping::map_search_response(&response)
    } else {
        mapping::map_charge_response(&response)
    };
    if let Outcome::Succeeded(reference) = &outcome {
        assert!((200..=299).contains(&status), "success on HTTP {status}");
        assert!(!reference.is_empty(), "success without a reference");
    }
    let _ = mapping::map_error_status(status, &response.body);
});
