//! The Redis retry queue: a ZSET of due times, a leased in-flight ZSET and a
//! hash of event payloads. One Lua script returns expired leases to the
//! queue and moves due items into the in-flight set atomically; an item
//! leaves in-flight only when `ack` runs after the Kafka commit.
//! Redis is not the source of truth: `payment_orders.next_retry_at` lets the
//! sweeper rebuild the queue.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::domain::events::Envelope;
use crate::kafka::Names;

const CLAIM_SCRIPT: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], ARGV[1], member)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local payload = redis.call('HGET', KEYS[3], member)
  if payload then
    redis.call('ZADD', KEYS[2], ARGV[3], member)
    table.insert(out, payload)
  end
end
return out
";

#[derive(Clone)]
pub struct RetryQueue {
    redis: ConnectionManager,
    queue_key: String,
    inflight_key: String,
    payloads_key: String,
}

impl RetryQueue {
    pub fn new(redis: ConnectionManager, names: &Names) -> Self {
        RetryQueue {
            redis,
            queue_key: names.redis_key("retry:queue"),
            inflight_key: names.redis_key("retry:inflight"),
            payloads_key: names.redis_key("retry:payloads"),
        }
    }

    /// Schedules `event` (a PSP call request) at `due_ms`. Idempotent: the
    /// member is the event id, which is deterministic.
    pub async fn schedule(&self, event: &Envelope, due_ms: i64) -> anyhow::Result<()> {
        let member = event.event_id.to_string();
        let payload = serde_json::to_string(event)?;
        let mut redis = self.redis.clone();
        redis::pipe()
            .atomic()
            .hset(&self.payloads_key, &member, payload)
            .ignore()
            .zadd(&self.queue_key, &member, due_ms)
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` due events, leased until `now_ms + lease_ms`.
    pub async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: u64,
    ) -> anyhow::Result<Vec<Envelope>> {
        let mut redis = self.redis.clone();
        let payloads: Vec<String> = Script::new(CLAIM_SCRIPT)
            .key(&self.queue_key)
            .key(&self.inflight_key)
            .key(&self.payloads_key)
            .arg(now_ms)
            .arg(limit)
            .arg(now_ms + lease_ms as i64)
            .invoke_async(&mut redis)
            .await?;
        let mut events = Vec::with_capacity(payloads.len());
        for payload in payloads {
            match serde_json::from_str(&payload) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::error!(%error, "undecodable retry payload dropped from Redis; the sweeper will rebuild it")
                }
            }
        }
        Ok(events)
    }

    /// Called after the Kafka commit: the events are delivered.
    pub async fn ack(&self, events: &[Envelope]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let members: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        let mut redis = self.redis.clone();
        redis::pipe()
            .atomic()
            .zrem(&self.inflight_key, &members)
            .ignore()
            .hdel(&self.payloads_key, &members)
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// Gives claimed events back without waiting for the lease (Kafka abort).
    pub async fn release(&self, events: &[Envelope], now_ms: i64) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        for event in events {
            let member = event.event_id.to_string();
            redis::pipe()
                .atomic()
                .zrem(&self.inflight_key, &member)
                .ignore()
                .zadd(&self.queue_key, &member, now_ms)
                .ignore()
                .query_async::<()>(&mut redis)
                .await?;
        }
        Ok(())
    }

    /// Whether Redis knows this retry (queued or in flight).
    pub async fn contains(&self, event: &Envelope) -> anyhow::Result<bool> {
        let member = event.event_id.to_string();
        let mut redis = self.redis.clone();
        let queued: Option<f64> = redis.zscore(&self.queue_key, &member).await?;
        let inflight: Option<f64> = redis.zscore(&self.inflight_key, &member).await?;
        Ok(queued.is_some() || inflight.is_some())
    }

    pub async fn size(&self) -> anyhow::Result<u64> {
        let mut redis = self.redis.clone();
        Ok(redis.zcard(&self.queue_key).await?)
    }
}
