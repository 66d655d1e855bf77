-- Idempotency keys expire (intake.idempotency_retention_secs) and are purged
-- oldest first in bounded batches; this index keeps each batch an index
-- range scan instead of a scan of the whole table.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
