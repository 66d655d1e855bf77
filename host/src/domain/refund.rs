//! Refund statuses and the transitions the node allows, and the events a
//! refund flows through.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::events::OrderRef;
use super::money::Money;
use super::payment::PspOutcome;

/// Status of one refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    /// Accepted; PSP calls in progress or a retry is scheduled.
    Requested,
    Succeeded,
    Failed,
    /// The PSP outcome is unknown and `refund-status` did not settle it.
    RequiresReview,
}

/// The guarded changes of a refund's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundTransition {
    /// The executor claims an attempt or schedules a retry.
    Attempt,
    /// A succeeded or declined result, or giving up after transients.
    Finalize,
    /// An unknown outcome that `refund-status` did not settle.
    RequireReview,
    /// The review janitor's `refund-status`, a notification (or an admin)
    /// settles a review.
    SettleReview,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] = [
        RefundStatus::Requested,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
        RefundStatus::RequiresReview,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Requested => "REQUESTED",
            RefundStatus::Succeeded => "SUCCEEDED",
            RefundStatus::Failed => "FAILED",
            RefundStatus::RequiresReview => "REQUIRES_REVIEW",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        RefundStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(self, RefundStatus::Succeeded | RefundStatus::Failed)
    }

    /// The one place the refund state machine is written down; the store's
    /// guarded updates bind [`RefundTransition::sources`].
    pub fn allows(self, transition: RefundTransition) -> bool {
        use RefundStatus::*;
        match transition {
            RefundTransition::Attempt
            | RefundTransition::Finalize
            | RefundTransition::RequireReview => self == Requested,
            RefundTransition::SettleReview => self == RequiresReview,
        }
    }
}

impl RefundTransition {
    pub fn sources(self) -> Vec<&'static str> {
        RefundStatus::ALL
            .into_iter()
            .filter(|status| status.allows(self))
            .map(RefundStatus::as_str)
            .collect()
    }
}

/// Payload of `RefundRequested` (one per attempt; key paymentOrderId).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefundRequested {
    pub refund_id: Uuid,
    #[serde(flatten)]
    pub order: OrderRef,
    /// What this refund gives back (the flattened order carries `amount`,
    /// the captured amount).
    pub refund_amount: Money,
    /// 1 for the first PSP call of this refund, then 2, 3, ...
    pub attempt: u32,
}

/// Payload of `RefundFinalized` (key paymentOrderId): a refund reached
/// SUCCEEDED or FAILED.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefundFinalized {
    pub refund_id: Uuid,
    #[serde(flatten)]
    pub order: OrderRef,
    pub refund_amount: Money,
    pub status: RefundStatus,
    pub psp_reference: Option<String>,
    pub reason: Option<String>,
    pub final_attempt: u32,
}

impl RefundFinalized {
    /// Its event: one id per refund ([`finalized_event_id`]), key
    /// paymentOrderId.
    pub fn envelope(&self, trace_id: &str, parent: Option<Uuid>) -> super::events::Envelope {
        super::events::Envelope::new(
            super::events::event_type::REFUND_FINALIZED,
            &self.refund_id.to_string(),
            0,
            trace_id,
            parent,
            self,
        )
    }
}

/// What one refund PSP call gave, as the executor hands it on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefundOutcome {
    pub outcome: PspOutcome,
    pub settled_by_status: bool,
}

/// A refund is finalized once (SUCCEEDED and FAILED are final), so its
/// `RefundFinalized` event has one id, whatever attempt finalized it.
pub fn finalized_event_id(refund_id: Uuid) -> Uuid {
    super::events::event_id(
        &refund_id.to_string(),
        super::events::event_type::REFUND_FINALIZED,
        0,
    )
}

/// The PSP idempotency key of a refund: stable across its attempts,
/// distinct from every order's and every other refund's.
pub fn refund_idempotency_key(refund_id: Uuid) -> String {
    format!("paynode-refund-{}", refund_id.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_events_keep_the_order_amount_apart_from_the_refund_amount() {
        let event = RefundRequested {
            refund_id: Uuid::nil(),
            order: OrderRef {
                payment_order_id: Uuid::nil(),
                payment_id: Uuid::nil(),
                seller_id: "s-1".into(),
                amount: Money::new(1_000, "EUR"),
            },
            refund_amount: Money::new(300, "EUR"),
            attempt: 1,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["amount"]["quantity"], 1_000);
        assert_eq!(json["refundAmount"]["quantity"], 300);
        assert_eq!(
            serde_json::from_value::<RefundRequested>(json).unwrap(),
            event
        );
    }

    #[test]
    fn final_refunds_accept_nothing_and_only_review_settles() {
        for status in [RefundStatus::Succeeded, RefundStatus::Failed] {
            for t in [
                RefundTransition::Attempt,
                RefundTransition::Finalize,
                RefundTransition::RequireReview,
                RefundTransition::SettleReview,
            ] {
                assert!(!status.allows(t), "{status:?} {t:?}");
            }
        }
        assert_eq!(
            RefundTransition::SettleReview.sources(),
            vec!["REQUIRES_REVIEW"]
        );
        assert_eq!(RefundTransition::Finalize.sources(), vec!["REQUESTED"]);
        for status in RefundStatus::ALL {
            assert_eq!(RefundStatus::parse(status.as_str()), Some(status));
        }
    }
}
