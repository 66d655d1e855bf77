//! Refunds draw like charges (same scenarios, same scripts under their own
//! keys), from the refund id instead of the order id; only the reference
//! differs, so a log or a fixture tells a refund from a charge.

use paynode_guest::Outcome;

use crate::simulate::Op;

/// A refund's PSP reference is told apart from a charge's by its prefix.
pub(crate) fn refund_reference(op: Op, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Succeeded(reference) if op.is_refund() => {
            Outcome::Succeeded(reference.replacen("sim_", "simrf_", 1))
        }
        other => other,
    }
}
