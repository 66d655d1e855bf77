//! `POST /api/v1/payments` bodies: any JSON the extractor accepts goes
//! through the handler's validation and row building
//! (`paynode::api::payments::build_payment`). Either it is refused (a 4xx in
//! the API) or every row it built keeps the intake invariants; it never
//! panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paynode::api::payments::{build_payment, CreatePayment};
use paynode::config::HttpConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<CreatePayment>(data) else {
        return;
    };
    let limits = HttpConfig {
        max_payment_orders: 8,
        max_order_amount_minor: 1_000_000,
        max_payment_amount_minor: 5_000_000,
        ..HttpConfig::default()
    };
    let Ok(payment) = build_payment(&limits, "fuzz-client", "fuzz-key".into(), "fuzz-trace", body)
    else {
        return;
    };
    assert!(payment.total_minor > 0 && payment.total_minor <= limits.max_payment_amount_minor);
    assert!(!payment.orders.is_empty() && payment.orders.len() <= limits.max_payment_orders);
    let mut sum: i64 = 0;
    let mut sellers = std::collections::HashSet::new();
    for order in &payment.orders {
        assert!(order.amount_minor > 0 && order.amount_minor <= limits.max_order_amount_minor);
        assert!(sellers.insert(order.seller_id.as_str()), "seller twice");
        assert!(!order.seller_id.contains('\0') && !order.seller_id.contains('.'));
        sum = sum.checked_add(order.amount_minor).expect("capped amounts cannot overflow");
        serde_json::from_str::<serde_json::Value>(&order.envelope_json).expect("envelope JSON");
    }
    assert_eq!(sum, payment.total_minor, "orders sum to the total");
    for id in [&payment.buyer_id, &payment.order_id] {
        assert!(!id.is_empty() && !id.contains('\0') && !id.contains('.'));
    }
    serde_json::from_str::<serde_json::Value>(&payment.response_json).expect("response JSON");
});
