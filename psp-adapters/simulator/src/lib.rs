//! PSP simulator as a PSP adapter component.
//!
//! The outcome of a call is a pure function of (payment-order-id, attempt,
//! config): FNV-1a 64 over the order id, the attempt and the optional config
//! `seed` gives a hash; splitmix64 seeded with it gives the draws, always in
//! this order: timeout, latency bucket, latency within the bucket, outcome.
//!
//! Config keys:
//! - `scenario`: `NORMAL` (default) | `PEAK` | `DEGRADED` | `BEST_PSP_EVER` |
//!   `scripted`, case-insensitive (`-` and `_` are interchangeable).
//! - `latency`: `on` (default) | `off`. Off never calls the host's `delay`.
//! - `seed`: optional string mixed into the hash.
//! - `script` (scripted only): comma list of `succeeded | declined |
//!   transient | unknown`, the outcome of attempt 1, 2, ...; the last entry
//!   repeats. Default `succeeded`.
//! - `status-script` (scripted only): the same for `status`, indexed by the
//!   request's attempt. Default `succeeded`.
//!
//! - `refund-script`, `refund-status-script` (scripted only): the same for
//!   `refund` and `refund-status`, indexed by the refund's attempt.
//!   Default `succeeded`.
//! - `webhook-secret`: name of the host secret notifications are signed
//!   with (default `sim_webhook_secret`).
//!
//! Refunds draw like charges, from the refund id instead of the order id;
//! a refund's PSP reference starts `simrf_`.
//!
//! Notifications (webhooks) are signed the simulator's simple way: header
//! `x-sim-signature` is the lowercase hex HMAC-SHA256 of the raw body under
//! the `webhook-secret` secret, which the host computes (the guest never
//! sees the key). The body is `key=value` pairs joined by `&` (no escaping;
//! values must not hold `&` or `=`): `id` (the event id), `type`
//! (`charge.succeeded` | `charge.failed` | `refund.succeeded` |
//! `refund.failed`), `key` (the idempotency key the host sent), and
//! optionally `reference` and `message`.
//!
//! `status` never delays. For the random scenarios it answers what the PSP
//! "really" did for that (order, attempt): the same draws without the
//! timeout. A bad config value answers `declined(invalid_config)`: the
//! simulator never charges, so refusing is always safe.

pub mod draws;
pub mod notification;
pub mod refunds;
pub mod scenarios;
pub mod scripted;
pub mod simulate;

pub use draws::{call_hash, fnv1a64, Draws, FNV_OFFSET, FNV_PRIME};
pub use notification::{parse_body, parse_notification};
pub use scenarios::{outcome_of, plan, Kind, Plan, Profile, Scenario};
pub use simulate::{simulate, Op, Sim};

use paynode_guest::v2::{self, Guest, Incoming, Notification, RefundRequest, Rejection};
use paynode_guest::{ChargeRequest, Config, Outcome, PluginInfo};

// The host calls live here, and only here: everything above is pure, so the
// native tests and the fixture test run it without a host. They go through
// `v2::delay` and `v2::debug`: the crate-root `debug` of the SDK imports the
// 1.0.0 interfaces, and the host refuses a 2.0.0 component that does.

/// A charge or its status: draws from the payment order id.
fn run(op: Op, config: &[(String, String)], request: &ChargeRequest) -> Outcome {
    let sim = simulate(op, config, &request.payment_order_id, request.attempt);
    if let Some(ms) = sim.delay_ms {
        v2::delay(ms);
    }
    v2::debug(&format!(
        "psp-simulator {op:?} order={} attempt={} scenario={} delay_ms={} -> {:?}",
        request.payment_order_id,
        request.attempt,
        sim.scenario,
        sim.delay_ms.unwrap_or(0),
        sim.outcome
    ));
    sim.outcome
}

/// A refund or its status: draws from the refund id.
fn run_refund(op: Op, config: &[(String, String)], request: &RefundRequest) -> Outcome {
    let sim = simulate(op, config, &request.refund_id, request.attempt);
    if let Some(ms) = sim.delay_ms {
        v2::delay(ms);
    }
    v2::debug(&format!(
        "psp-simulator {op:?} refund={} order={} attempt={} scenario={} -> {:?}",
        request.refund_id, request.payment_order_id, request.attempt, sim.scenario, sim.outcome
    ));
    sim.outcome
}

struct Simulator;

impl Guest for Simulator {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "psp-simulator".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn charge(config: Config, request: ChargeRequest) -> Outcome {
        run(Op::Charge, &config, &request)
    }

    fn status(config: Config, request: ChargeRequest) -> Outcome {
        run(Op::Status, &config, &request)
    }

    fn refund(config: Config, request: RefundRequest) -> Outcome {
        run_refund(Op::Refund, &config, &request)
    }

    fn refund_status(config: Config, request: RefundRequest) -> Outcome {
        run_refund(Op::RefundStatus, &config, &request)
    }

    fn parse_notification(
        config: Config,
        notification: Incoming,
    ) -> Result<Vec<Notification>, Rejection> {
        parse_notification(&config, &notification)
    }
}

paynode_guest::v2::export_adapter_v2!(Simulator);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fixture_tests;
