//! What a stage decides for each record of a batch, and how a failure is
//! classified: the record's own problem (DLQ) or a passing one (retry).

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::StreamExt;

use crate::domain::events::Envelope;

use super::consume::Inbound;
use super::outbound::Outbound;

#[derive(Debug)]
pub enum Failure {
    /// Can never succeed as is: the record goes to its DLQ.
    Poison {
        class: &'static str,
        message: String,
    },
    /// May succeed later (a database or broker hiccup): abort and retry the batch.
    Retryable(anyhow::Error),
}

/// A component failure is the record's problem (DLQ), unless the runtime
/// is only busy, which a retry of the batch fixes.
impl From<crate::components::PluginError> for Failure {
    fn from(error: crate::components::PluginError) -> Self {
        match error {
            crate::components::PluginError::Unavailable(_) => Failure::Retryable(error.into()),
            other => Failure::Poison {
                class: other.class(),
                message: other.to_string(),
            },
        }
    }
}

/// A database error that will repeat on every retry (bad data, a violated
/// constraint, a value the domain cannot read) is the record's problem: it
/// goes to the DLQ. Connection, pool, serialization and deadlock errors may
/// pass: the batch is retried with backoff.
impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        if let Some(class) = deterministic_class(&error) {
            return Failure::Poison {
                class,
                message: format!("{error:#}"),
            };
        }
        Failure::Retryable(error.into())
    }
}

/// `Some(class)` when retrying cannot help: SQLSTATE class 22 (data
/// exception, e.g. `bigint out of range`, NUL in text) or 23 (integrity
/// constraint), or a stored value this code cannot decode.
pub fn deterministic_class(error: &sqlx::Error) -> Option<&'static str> {
    match error {
        sqlx::Error::Database(db) => match db.code().as_deref().map(|c| c.get(..2)) {
            Some(Some("22")) => Some("database_data"),
            Some(Some("23")) => Some("database_constraint"),
            _ => None,
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => Some("database_decode"),
        _ => None,
    }
}

pub type Decision = Result<Vec<Outbound>, Failure>;

impl Failure {
    /// Every record of a batch that failed as a whole, for a retry.
    pub fn retry_all(records: usize, error: &anyhow::Error) -> Vec<Decision> {
        let message = format!("{error:#}");
        (0..records)
            .map(|_| Err(Failure::Retryable(anyhow::anyhow!("{message}"))))
            .collect()
    }
}

/// A batch's decisions, as a batch-shaped stage fills them in.
pub struct Decisions(Vec<Option<Decision>>);

impl Decisions {
    /// Decodes every record; one that does not decode is decided at once.
    pub fn decode<T>(
        batch: &[Inbound],
        decode: impl Fn(&Inbound) -> Result<T, Failure>,
    ) -> (Decisions, Vec<(usize, T)>) {
        let mut decisions = Decisions((0..batch.len()).map(|_| None).collect());
        let mut items = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match decode(record) {
                Ok(item) => items.push((index, item)),
                Err(failure) => decisions.0[index] = Some(Err(failure)),
            }
        }
        (decisions, items)
    }

    pub fn set(&mut self, index: usize, decision: Decision) {
        self.0[index] = Some(decision);
    }

    pub fn is_set(&self, index: usize) -> bool {
        self.0[index].is_some()
    }

    pub fn extend(&mut self, decided: Vec<(usize, Decision)>) {
        for (index, decision) in decided {
            self.set(index, decision);
        }
    }

    pub fn into_vec(self) -> Vec<Decision> {
        self.0
            .into_iter()
            .map(|d| d.expect("every record decided"))
            .collect()
    }
}

/// Splits a batch's items into rounds that hold each key at most once, in
/// batch order: a stage that decides a round at once sees every aggregate
/// as the previous round left it.
pub fn rounds<T, K: std::hash::Hash + Eq>(
    items: &[(usize, T)],
    key: impl Fn(&T) -> K,
) -> Vec<Vec<usize>> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (position, (_, item)) in items.iter().enumerate() {
        let round = seen.entry(key(item)).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(position);
        *round += 1;
    }
    rounds
}

/// Runs `futures` at most `limit` at a time; results in completion order.
/// The futures are boxed so that `async_trait`'s `Send` bound does not have
/// to see through closures borrowing the batch.
pub async fn bounded<'a, T: Send + 'a>(futures: Vec<BoxFuture<'a, T>>, limit: usize) -> Vec<T> {
    futures::stream::iter(futures)
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}

/// The span a record's work runs in: its log lines carry the event's ids.
pub fn event_span(stage: &'static str, envelope: &Envelope) -> tracing::Span {
    tracing::info_span!("event",
        stage, eventId = %envelope.event_id, traceId = %envelope.trace_id,
        parentEventId = ?envelope.parent_event_id, aggregateId = %envelope.aggregate_id,
        eventType = %envelope.event_type)
}

pub fn decode(record: &Inbound) -> Result<Envelope, Failure> {
    serde_json::from_slice(&record.payload).map_err(|e| Failure::Poison {
        class: "undecodable",
        message: format!("not an event envelope: {e}"),
    })
}
