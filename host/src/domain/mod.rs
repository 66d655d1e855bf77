//! Pure domain types: money, payment statuses, event envelopes. No I/O here.

pub mod events;
pub mod ledger;
pub mod money;
pub mod payment;
pub mod refund;
