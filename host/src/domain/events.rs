//! The event envelope every topic carries, and the payloads of each event.
//!
//! Event ids are deterministic (UUIDv5 of aggregate id, event type and
//! attempt) so a replay produces the same id and downstream dedupe works.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use super::money::Money;
use super::payment::PspOutcome;

/// Namespace for paynode's v5 event ids.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x5f1c_0d6e_93a4_4b7e_9a1d_2c3b_4e5f_6a7b);

pub mod event_type {
    pub const PAYMENT_ORDER_CREATED: &str = "PaymentOrderCreated";
    pub const PSP_CALL_REQUESTED: &str = "PaymentOrderPspCallRequested";
    pub const PSP_RESULT_UPDATED: &str = "PaymentOrderPspResultUpdated";
    pub const PAYMENT_ORDER_FINALIZED: &str = "PaymentOrderFinalized";
    pub const LEDGER_RECORDING_REQUESTED: &str = "LedgerRecordingRequested";
    pub const LEDGER_ENTRIES_RECORDED: &str = "LedgerEntriesRecorded";
    pub const REFUND_REQUESTED: &str = "RefundRequested";
    pub const REFUND_FINALIZED: &str = "RefundFinalized";
}

/// Deterministic id of the event `event_type` for `aggregate_id` at `attempt`.
pub fn event_id(aggregate_id: &str, event_type: &str, attempt: u32) -> Uuid {
    let name = format!("{aggregate_id}|{event_type}|{attempt}");
    Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_id: String,
    pub trace_id: String,
    pub parent_event_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl Envelope {
    /// A new event caused by `parent` (or by an HTTP request when `parent` is None).
    pub fn new<T: Serialize>(
        event_type: &str,
        aggregate_id: &str,
        attempt: u32,
        trace_id: &str,
        parent_event_id: Option<Uuid>,
        data: &T,
    ) -> Self {
        Envelope {
            event_id: event_id(aggregate_id, event_type, attempt),
            event_type: event_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            trace_id: trace_id.to_string(),
            parent_event_id,
            occurred_at: Utc::now(),
            data: serde_json::to_value(data).expect("event payloads serialize"),
        }
    }

    /// The child of `self`: same trace, parent = this event.
    pub fn child<T: Serialize>(
        &self,
        event_type: &str,
        aggregate_id: &str,
        attempt: u32,
        data: &T,
    ) -> Self {
        Envelope::new(
            event_type,
            aggregate_id,
            attempt,
            &self.trace_id,
            Some(self.event_id),
            data,
        )
    }

    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.data.clone())
    }
}

/// The order fields every payment-order event repeats, so stages never need
/// a DB read just to route or describe an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderRef {
    pub payment_order_id: Uuid,
    pub payment_id: Uuid,
    pub seller_id: String,
    pub amount: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PspCallRequested {
    #[serde(flatten)]
    pub order: OrderRef,
    /// 1 for the first PSP call, then 2, 3, ...
    pub attempt: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PspResultUpdated {
    #[serde(flatten)]
    pub order: OrderRef,
    pub attempt: u32,
    pub outcome: PspOutcome,
    pub latency_ms: u64,
    /// sha256 of the adapter component that produced the outcome.
    pub component_sha256: String,
    /// True when `status` settled an unknown charge.
    pub settled_by_status: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FinalStatus {
    Succeeded,
    Failed,
}

impl FinalStatus {
    /// The final status an order has, if it has one.
    pub fn of(status: crate::domain::payment::OrderStatus) -> Option<Self> {
        use crate::domain::payment::OrderStatus;
        match status {
            OrderStatus::Succeeded => Some(FinalStatus::Succeeded),
            OrderStatus::Failed => Some(FinalStatus::Failed),
            OrderStatus::Initiated
            | OrderStatus::Pending
            | OrderStatus::RequiresReview
            | OrderStatus::Parked => None,
        }
    }

    pub fn order_status(self) -> crate::domain::payment::OrderStatus {
        use crate::domain::payment::OrderStatus;
        match self {
            FinalStatus::Succeeded => OrderStatus::Succeeded,
            FinalStatus::Failed => OrderStatus::Failed,
        }
    }
}

/// Payload of both `PaymentOrderFinalized` and `LedgerRecordingRequested`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderFinalized {
    #[serde(flatten)]
    pub order: OrderRef,
    pub status: FinalStatus,
    pub psp_reference: Option<String>,
    pub final_attempt: u32,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordedPosting {
    pub account: String,
    /// "debit" | "credit"
    pub side: String,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordedJournal {
    pub journal_id: String,
    pub kind: String,
    pub currency: String,
    pub postings: Vec<RecordedPosting>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntriesRecorded {
    pub payment_order_id: Uuid,
    pub seller_id: String,
    pub source_event_id: Uuid,
    pub rule_sha256: String,
    pub journals: Vec<RecordedJournal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_and_distinct_per_attempt() {
        let a = event_id("po-1", event_type::PSP_CALL_REQUESTED, 1);
        assert_eq!(a, event_id("po-1", event_type::PSP_CALL_REQUESTED, 1));
        assert_ne!(a, event_id("po-1", event_type::PSP_CALL_REQUESTED, 2));
        assert_ne!(a, event_id("po-1", event_type::PSP_RESULT_UPDATED, 1));
        assert_ne!(a, event_id("po-2", event_type::PSP_CALL_REQUESTED, 1));
    }

    #[test]
    fn order_finalized_round_trips_with_flattened_order() {
        let order = OrderRef {
            payment_order_id: Uuid::nil(),
            payment_id: Uuid::nil(),
            seller_id: "s-1".into(),
            amount: Money::new(1250, "EUR"),
        };
        let event = OrderFinalized {
            order,
            status: FinalStatus::Succeeded,
            psp_reference: Some("ref".into()),
            final_attempt: 2,
            reason: None,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["sellerId"], "s-1");
        assert_eq!(json["status"], "SUCCEEDED");
        let back: OrderFinalized = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
