//! Records a stage produces: the envelope, its id headers, and queueing
//! on the open transaction.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::domain::events::Envelope;
use crate::kafka::{header, Names};

/// One record to produce; `topic` is the logical (unprefixed) name.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub topic: &'static str,
    pub key: String,
    pub envelope: Envelope,
    pub headers: Vec<(&'static str, String)>,
}

impl Outbound {
    pub fn new(topic: &'static str, key: impl Into<String>, envelope: Envelope) -> Self {
        Outbound {
            topic,
            key: key.into(),
            envelope,
            headers: Vec::new(),
        }
    }
}

pub fn envelope_headers(envelope: &Envelope, extra: &[(&'static str, String)]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::EVENT_ID,
            value: Some(&envelope.event_id.to_string()),
        })
        .insert(Header {
            key: header::EVENT_TYPE,
            value: Some(&envelope.event_type),
        })
        .insert(Header {
            key: header::TRACE_ID,
            value: Some(&envelope.trace_id),
        })
        .insert(Header {
            key: header::AGGREGATE_ID,
            value: Some(&envelope.aggregate_id),
        });
    if let Some(parent) = envelope.parent_event_id {
        headers = headers.insert(Header {
            key: header::PARENT_EVENT_ID,
            value: Some(&parent.to_string()),
        });
    }
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// Queues one record on the open transaction.
pub fn send(producer: &FutureProducer, names: &Names, out: &Outbound) -> anyhow::Result<()> {
    let topic = names.topic(out.topic);
    let payload = serde_json::to_vec(&out.envelope)?;
    let record = FutureRecord::to(&topic)
        .key(&out.key)
        .payload(&payload)
        .headers(envelope_headers(&out.envelope, &out.headers));
    producer
        .send_result(record)
        .map_err(|(error, _)| anyhow::anyhow!("queueing record for {topic}: {error}"))?;
    Ok(())
}
