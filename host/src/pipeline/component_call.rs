//! A stage's call into a component: timed, counted, and what its failure
//! means for the stage. The order and the refund stages share this; they
//! differ in what they do with the answer, not in how they ask.

use std::time::Instant;

use sha2::{Digest, Sha256};

use super::decision::Failure;
use super::PipelineContext;
use crate::components::bindings::adapter::paynode::psp_adapter::types as adapter;
use crate::components::bindings::policy::paynode::retry_policy::types as policy;
use crate::components::runtime::CallStats;
use crate::components::{PluginError, Slot};
use crate::domain::events::Envelope;

/// What a charge, status, refund or refund-status call answered. A call cut
/// off after its request left may have acted at the PSP: that is `unknown`
/// (a question for the status call), never a refusal.
pub fn psp_answer(
    started: Instant,
    result: Result<(adapter::Outcome, CallStats), PluginError>,
) -> Result<adapter::Outcome, Failure> {
    crate::metrics::component_call(Slot::PspAdapter.as_str(), started, result.as_ref().err());
    match result {
        Ok((outcome, _)) => Ok(outcome),
        Err(PluginError::AfterRequest(reason)) => Ok(adapter::Outcome::Unknown(reason)),
        Err(error) => Err(Failure::from(error)),
    }
}

/// Asks the active retry-policy component about a transient failure. A
/// delay it answers is capped at `retry.max_delay_ms`.
pub async fn ask_retry_policy(
    ctx: &PipelineContext,
    trace_id: &str,
    context: &policy::RetryContext,
) -> Result<policy::Decision, Failure> {
    let active = ctx
        .registry
        .active(Slot::RetryPolicy)
        .map_err(Failure::from)?;
    let env = ctx.registry.env(Slot::RetryPolicy, trace_id);
    let started = Instant::now();
    let decided = ctx
        .registry
        .runtime()
        .decide(&active.loaded, &env, &active.config, context)
        .await;
    crate::metrics::component_call(Slot::RetryPolicy.as_str(), started, decided.as_ref().err());
    Ok(match decided.map_err(Failure::from)?.0 {
        policy::Decision::RetryAfter(ms) => {
            policy::Decision::RetryAfter(ms.min(ctx.config.retry.max_delay_ms))
        }
        give_up => give_up,
    })
}

/// The retry policy's randomness: derived from the event id, so a replay
/// decides exactly as the first run did.
pub fn random_from(envelope: &Envelope) -> u64 {
    let digest = Sha256::digest(envelope.event_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}
