-- Transactional outbox, range-partitioned by created_at in 30-minute
-- partitions. The DEFAULT partition catches any row whose partition the
-- maintenance task has not created yet, so an insert never fails for that.
CREATE TABLE outbox_event (
    event_id     uuid        NOT NULL,
    topic        text        NOT NULL,
    message_key  text        NOT NULL,
    envelope     jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'NEW' CHECK (status IN ('NEW', 'SENT')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    PRIMARY KEY (event_id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE outbox_event_default PARTITION OF outbox_event DEFAULT;
CREATE INDEX outbox_event_new_idx ON outbox_event (created_at) WHERE status = 'NEW';

-- Creates the 30-minute partitions covering [now - 30 min, now + ahead).
-- A range already holding rows in DEFAULT is skipped (Postgres refuses it);
-- those rows stay readable in DEFAULT.
CREATE FUNCTION paynode_outbox_create_partitions(ahead interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    slot_start timestamptz := to_timestamp(floor(extract(epoch FROM now() - interval '30 minutes') / 1800) * 1800);
    created integer := 0;
    name text;
BEGIN
    WHILE slot_start < now() + ahead LOOP
        name := 'outbox_event_p' || to_char(slot_start AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF outbox_event FOR VALUES FROM (%L) TO (%L)',
                               name, slot_start, slot_start + interval '30 minutes');
                created := created + 1;
            EXCEPTION WHEN check_violation OR invalid_object_definition THEN
                RAISE NOTICE 'outbox partition % skipped: rows for it sit in DEFAULT', name;
            END;
        END IF;
        slot_start := slot_start + interval '30 minutes';
    END LOOP;
    RETURN created;
END;
$$;

-- Drops partitions that ended before now - keep and hold no unsent row.
CREATE FUNCTION paynode_outbox_drop_drained(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    pending boolean;
BEGIN
    FOR part IN
        SELECT c.relname AS name
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'outbox_event'::regclass AND c.relname LIKE 'outbox_event_p%'
    LOOP
        IF (to_timestamp(substr(part.name, 15), 'YYYYMMDD_HH24MI')::timestamp AT TIME ZONE 'UTC') + interval '30 minutes' < now() - keep THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE status = %L)', part.name, 'NEW') INTO pending;
            IF NOT pending THEN
                EXECUTE format('DROP TABLE %I', part.name);
                dropped := dropped + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;

SELECT paynode_outbox_create_partitions(interval '3 hours');
