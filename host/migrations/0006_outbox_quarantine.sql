-- A row the dispatcher cannot publish (undecodable envelope, unknown topic)
-- is set aside as QUARANTINED instead of blocking the head of the outbox.
ALTER TABLE outbox_event DROP CONSTRAINT outbox_event_status_check;
ALTER TABLE outbox_event ADD CONSTRAINT outbox_event_status_check CHECK (status IN ('NEW', 'SENT', 'QUARANTINED'));
