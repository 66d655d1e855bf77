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
