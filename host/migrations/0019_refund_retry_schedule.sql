-- When a refund's next attempt is due (as payment_orders.next_retry_at):
-- the retry itself waits in Redis, which keeps nothing on disk; the retry
-- sweeper rebuilds a lost one from this column. NULL once the refund left
-- REQUESTED.
ALTER TABLE refunds ADD COLUMN next_retry_at timestamptz;
CREATE INDEX refunds_next_retry_idx ON refunds (next_retry_at)
    WHERE next_retry_at IS NOT NULL;
