//! LedgerRecordingRequestDispatcher.
//!
//! - consumes `payment_order_finalized_topic` (key paymentOrderId)
//! - produces `ledger_record_request_queue_topic`, re-keyed by **sellerId** so
//!   one seller's journals are recorded in order by one consumer
//! - idempotency: output id derived from (order id, type, final attempt)
//! - DLQ: undecodable events

use async_trait::async_trait;

use super::decision::{Decision, Failure};
use super::outbound::Outbound;
use super::stage_loop::Stage;
use crate::domain::events::{event_type, Envelope, OrderFinalized};
use crate::kafka::topic;

pub struct LedgerRecordingRequestDispatcher;

#[async_trait]
impl Stage for LedgerRecordingRequestDispatcher {
    fn name(&self) -> &'static str {
        "ledger_recording_request_dispatcher"
    }

    fn input_topic(&self) -> &'static str {
        topic::PAYMENT_ORDER_FINALIZED
    }

    async fn handle(&self, envelope: &Envelope) -> Decision {
        let finalized: OrderFinalized = envelope.payload().map_err(|e| Failure::Poison {
            class: "undecodable",
            message: format!("bad PaymentOrderFinalized: {e}"),
        })?;
        let aggregate = finalized.order.payment_order_id.to_string();
        let event = envelope.child(
            event_type::LEDGER_RECORDING_REQUESTED,
            &aggregate,
            finalized.final_attempt,
            &finalized,
        );
        Ok(vec![Outbound::new(
            topic::LEDGER_RECORD_REQUEST,
            finalized.order.seller_id.clone(),
            event,
        )])
    }
}
