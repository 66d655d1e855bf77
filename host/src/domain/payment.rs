//! Payment order statuses and the transitions the node allows.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Status of one payment order (one seller's share of a payment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted, not yet charged.
    Initiated,
    /// A PSP call is in progress or a retry is scheduled.
    Pending,
    Succeeded,
    Failed,
    /// The PSP outcome is unknown and `status` did not settle it.
    RequiresReview,
    /// Its event is in a DLQ; `dlq replay` resumes it.
    Parked,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Initiated => "INITIATED",
            OrderStatus::Pending => "PENDING",
            OrderStatus::Succeeded => "SUCCEEDED",
            OrderStatus::Failed => "FAILED",
            OrderStatus::RequiresReview => "REQUIRES_REVIEW",
            OrderStatus::Parked => "PARKED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "INITIATED" => OrderStatus::Initiated,
            "PENDING" => OrderStatus::Pending,
            "SUCCEEDED" => OrderStatus::Succeeded,
            "FAILED" => OrderStatus::Failed,
            "REQUIRES_REVIEW" => OrderStatus::RequiresReview,
            "PARKED" => OrderStatus::Parked,
            _ => return None,
        })
    }

    /// Final for the PSP flow: no further PSP call may happen.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Succeeded | OrderStatus::Failed)
    }

    /// May `transition` start from this status? The one place the order
    /// state machine is written down: the store's guarded updates bind
    /// [`Transition::sources`], so SQL and code can never disagree.
    pub fn allows(self, transition: Transition) -> bool {
        use OrderStatus::*;
        match transition {
            // A PSP call may only start for an order nobody settled or set
            // aside; PARKED waits for the explicit `dlq replay`.
            Transition::StartPspCall => matches!(self, Initiated | Pending),
            Transition::Finalize | Transition::ScheduleRetry | Transition::RequireReview => {
                matches!(self, Initiated | Pending)
            }
            // A review is a human's (or the janitor's) business, and final is final.
            Transition::Park => matches!(self, Initiated | Pending),
            Transition::Resume => matches!(self, Parked),
            Transition::SettleReview => matches!(self, RequiresReview),
        }
    }
}

/// The guarded changes of a payment order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The executor claims an attempt (INITIATED becomes PENDING).
    StartPspCall,
    /// A succeeded or declined result, or giving up after transients.
    Finalize,
    /// A transient result with the policy's next due time.
    ScheduleRetry,
    /// An unknown outcome that `status` did not settle.
    RequireReview,
    /// Its event went to a DLQ.
    Park,
    /// `dlq replay` puts a parked order back on the road.
    Resume,
    /// The janitor's `status` answer or an admin settles a review.
    SettleReview,
}

impl Transition {
    /// The statuses this transition may start from, as stored text.
    pub fn sources(self) -> Vec<&'static str> {
        OrderStatus::ALL
            .into_iter()
            .filter(|status| status.allows(self))
            .map(OrderStatus::as_str)
            .collect()
    }
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Initiated,
        OrderStatus::Pending,
        OrderStatus::Succeeded,
        OrderStatus::Failed,
        OrderStatus::RequiresReview,
        OrderStatus::Parked,
    ];
}

/// The outcome of one PSP call as the host records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PspOutcome {
    /// succeeded | declined | transient | unknown
    pub kind: OutcomeKind,
    pub code: Option<String>,
    pub message: Option<String>,
    pub psp_reference: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    Succeeded,
    Declined,
    Transient,
    Unknown,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Declined => "declined",
            OutcomeKind::Transient => "transient",
            OutcomeKind::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "succeeded" => OutcomeKind::Succeeded,
            "declined" => OutcomeKind::Declined,
            "transient" => OutcomeKind::Transient,
            "unknown" => OutcomeKind::Unknown,
            _ => return None,
        })
    }
}

impl PspOutcome {
    pub fn succeeded(reference: String) -> Self {
        PspOutcome {
            kind: OutcomeKind::Succeeded,
            code: None,
            message: None,
            psp_reference: Some(reference),
        }
    }

    pub fn failure(kind: OutcomeKind, code: String, message: String) -> Self {
        PspOutcome {
            kind,
            code: Some(code),
            message: Some(message),
            psp_reference: None,
        }
    }

    pub fn unknown(reason: String) -> Self {
        PspOutcome {
            kind: OutcomeKind::Unknown,
            code: None,
            message: Some(reason),
            psp_reference: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_and_review_orders_accept_no_psp_call_and_no_parking() {
        for status in [
            OrderStatus::Succeeded,
            OrderStatus::Failed,
            OrderStatus::RequiresReview,
            OrderStatus::Parked,
        ] {
            assert!(!status.allows(Transition::StartPspCall), "{status:?}");
            assert!(!status.allows(Transition::Park), "{status:?}");
            assert!(!status.allows(Transition::Finalize), "{status:?}");
        }
    }

    #[test]
    fn only_parked_resumes_and_only_review_settles() {
        assert_eq!(Transition::Resume.sources(), vec!["PARKED"]);
        assert_eq!(Transition::SettleReview.sources(), vec!["REQUIRES_REVIEW"]);
        assert_eq!(Transition::Park.sources(), vec!["INITIATED", "PENDING"]);
    }

    #[test]
    fn every_status_round_trips_through_text() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("pending"), None);
    }
}
