//! Group commit for `POST /api/v1/payments`.
//!
//! One durable commit per request capped intake at what Postgres can fsync
//! (≈ 2 000 payments/s here). Instead, a handler validates and builds its
//! rows in memory, then hands them to a queue; a writer task takes every
//! request queued (up to `intake.group_max_requests`) and writes them all in
//! one transaction with one statement per table (`store::intake`). Each
//! request is answered after that transaction ends.
//!
//! # One request, its own answer
//! - **Validation** happens in the handler, before the queue: an invalid
//!   request never joins a group.
//! - **Same key on this node, first still queued or in flight**: refused 409
//!   by the in-memory [`InFlight`] set before the queue.
//! - **Same key on another node, first in flight**: each group try-locks its
//!   keys' advisory locks (transaction-scoped, so a crash never strands a
//!   key); a lock held elsewhere answers 409.
//! - **Key already stored**: same body → the stored response, replayed;
//!   different body → 422. Read after the lock, so a committed first request
//!   is always seen.
//! - **Key expired** (older than `intake.idempotency_retention_secs`, default
//!   24 h): forgotten, the request is a new one. What stops a late retry from
//!   paying twice is then the `(client, orderId)` rule below (409), which
//!   never expires; [`retention`] purges expired keys in bounded batches.
//! - **(client, orderId) taken**, by an earlier payment or an earlier request
//!   of the same group: `ON CONFLICT DO NOTHING RETURNING` tells the winners;
//!   the others get 409 and write nothing.
//!
//! Set-based statements, not a savepoint per request: a savepoint costs
//! every request its own round trips again (SAVEPOINT, five statements,
//! RELEASE) — the per-statement cost group commit exists to remove — and
//! past 64 subtransactions Postgres overflows its subxid cache, which slows
//! every snapshot on the server. The expected failures are decided in memory
//! or by `ON CONFLICT`, so nothing needs rolling back per request.
//!
//! # Failure, deadline, shutdown
//! - A group that fails on an unexpected database error is retried one
//!   request per transaction, so one bad request cannot fail the others.
//! - A group transaction is bounded by `intake.group_timeout_ms` on both
//!   sides (a client timeout, and `statement_timeout` on the server); past
//!   it the transaction is rolled back, its locks with it, and every request
//!   of the group is answered 503. A request whose HTTP deadline fired while
//!   queued is dropped from its group unwritten.
//! - Writers stop when the last handle is gone, after the HTTP server has
//!   drained; every request queued by then is written and answered. A reply
//!   lost any other way (a writer panicked) is a 503 in the handler.

mod in_flight;
pub mod key;
pub mod retention;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::store::intake::NewPayment;
pub use in_flight::{Claim, InFlight};

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// Written and committed; the 202 body (JSON text).
    Accepted { response_json: String },
    /// The key's stored response (same body as the first request).
    Replayed { status: u16, body: Value },
    /// The key was used with a different body.
    KeyReused,
    /// The key's first request is still queued or in flight.
    KeyInFlight,
    /// (client, orderId) already has a payment.
    OrderTaken,
    /// Not written: the group failed or timed out, or intake is overloaded
    /// or stopping. Safe to retry with the same key.
    Unavailable { reason: &'static str },
}

/// The handle handlers submit to; cheap to clone.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<writer::Queued>,
    in_flight: InFlight,
}

/// How groups are formed and bounded (from `[intake]` and the failpoints).
#[derive(Clone)]
struct Settings {
    max_requests: usize,
    max_wait: Duration,
    timeout: Duration,
    hold: Duration,
    /// Idempotency keys older than this are expired.
    retention_secs: u64,
}

impl Intake {
    /// Starts `intake.writers` writer tasks on `tasks`; they end once every
    /// handle is dropped and the queue is drained.
    pub fn start(pool: PgPool, config: &Config, tasks: &mut JoinSet<anyhow::Result<()>>) -> Intake {
        let intake = &config.intake;
        let (queue, receiver) = mpsc::channel(intake.queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let settings = Settings {
            max_requests: intake.group_max_requests,
            max_wait: Duration::from_micros(intake.group_max_wait_us),
            timeout: Duration::from_millis(intake.group_timeout_ms),
            hold: Duration::from_millis(config.failpoints.intake_hold_ms),
            retention_secs: intake.idempotency_retention_secs,
        };
        for _ in 0..intake.writers {
            let (receiver, pool, settings) = (receiver.clone(), pool.clone(), settings.clone());
            tasks.spawn(async move {
                writer::run(&receiver, &pool, &settings).await;
                Ok(())
            });
        }
        Intake {
            queue,
            in_flight: InFlight::default(),
        }
    }

    /// Writes `payment` in the next group and waits for its outcome.
    pub async fn submit(&self, payment: NewPayment) -> Outcome {
        let Some(claim) = self
            .in_flight
            .claim(&payment.client_id, &payment.idempotency_key)
        else {
            return Outcome::KeyInFlight;
        };
        let (reply, answer) = oneshot::channel();
        let queued = writer::Queued {
            payment,
            reply,
            claim,
        };
        // Fail fast past the bound instead of queueing without limit.
        if let Err(error) = self.queue.try_send(queued) {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "intake queue full",
                mpsc::error::TrySendError::Closed(_) => "intake stopping",
            };
            return Outcome::Unavailable { reason };
        }
        answer.await.unwrap_or(Outcome::Unavailable {
            reason: "intake writer stopped",
        })
    }

    /// Keys queued or in flight on this node (tests, gauges).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
