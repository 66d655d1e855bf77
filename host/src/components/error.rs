//! How a component call can fail. Every failure is one call's failure, never
//! the host's.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PluginError {
    /// The guest trapped (panic, unreachable, out-of-bounds...).
    #[error("component trapped: {0}")]
    Trap(String),
    /// CPU budget (fuel) or wall-clock cap exhausted.
    #[error("component exceeded its time budget: {0}")]
    Timeout(String),
    /// Memory cap or another store limit hit.
    #[error("component exceeded a resource limit: {0}")]
    ResourceLimit(String),
    /// The call returned, but its output breaks a host invariant or size cap.
    #[error("component output rejected: {0}")]
    InvalidOutput(String),
    /// The binary does not parse, does not implement the slot's world, or
    /// imports something outside it.
    #[error("component refused: {0}")]
    InvalidComponent(String),
    /// The call failed (trap, cap, limit) after one of its HTTP requests
    /// had left: the PSP may have acted on it, so for a charge this is an
    /// unknown outcome to settle with `status`, never a refusal.
    #[error("component failed after an HTTP request left: {0}")]
    AfterRequest(String),
    /// The component's contract version lacks the export (a psp-adapter
    /// 1.0.0 has no `refund` nor `parse-notification`). Deterministic: never
    /// retried.
    #[error("{0}")]
    Unsupported(String),
    /// No capacity right now (instance pool exhausted); retry later.
    #[error("component runtime unavailable: {0}")]
    Unavailable(String),
}

impl PluginError {
    /// A short label for metrics and DLQ headers.
    pub fn class(&self) -> &'static str {
        match self {
            PluginError::Trap(_) => "trap",
            PluginError::Timeout(_) => "timeout",
            PluginError::ResourceLimit(_) => "resource_limit",
            PluginError::InvalidOutput(_) => "invalid_output",
            PluginError::InvalidComponent(_) => "invalid_component",
            PluginError::AfterRequest(_) => "after_request",
            PluginError::Unsupported(_) => "unsupported",
            PluginError::Unavailable(_) => "unavailable",
        }
    }
}
