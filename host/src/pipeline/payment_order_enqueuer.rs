//! PaymentOrderEnqueuer.
//!
//! - consumes `payment_order_created_topic` (key paymentOrderId)
//! - produces `payment_order_psp_call_requested_topic` attempt 1 (key paymentOrderId)
//! - idempotency: the output event id is derived from (order id, type, 1), so a
//!   redelivery re-produces the same event and the executor's claim dedupes it
//! - DLQ: undecodable events

use async_trait::async_trait;

use super::decision::{Decision, Failure};
use super::outbound::Outbound;
use super::stage_loop::Stage;
use crate::domain::events::{event_type, Envelope, OrderRef, PspCallRequested};
use crate::kafka::topic;

pub struct PaymentOrderEnqueuer;

#[async_trait]
impl Stage for PaymentOrderEnqueuer {
    fn name(&self) -> &'static str {
        "payment_order_enqueuer"
    }

    fn input_topic(&self) -> &'static str {
        topic::PAYMENT_ORDER_CREATED
    }

    async fn handle(&self, envelope: &Envelope) -> Decision {
        let order: OrderRef = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad PaymentOrderCreated: {e}"),
        })?;
        let key = order.payment_order_id.to_string();
        let request = PspCallRequested { order, attempt: 1 };
        let event = envelope.child(event_type::PSP_CALL_REQUESTED, &key, 1, &request);
        Ok(vec![Outbound::new(topic::PSP_CALL_REQUESTED, key, event)])
    }
}
