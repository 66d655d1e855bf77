-- Outbox partition maintenance may run from several places at once (each
-- node's dispatcher, an operator's call, a second node on the same
-- database). Two runs used to race: both saw a partition missing and the
-- second CREATE failed with duplicate_table, or one dropped a partition the
-- other was about to inspect (undefined_table). Each function now takes a
-- transaction-scoped advisory lock first, so runs take turns, and still
-- tolerates a partition that appeared or vanished under it (e.g. created by
-- hand while it ran).
CREATE OR REPLACE FUNCTION paynode_outbox_create_partitions(ahead interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    slot_start timestamptz := to_timestamp(floor(extract(epoch FROM now() - interval '30 minutes') / 1800) * 1800);
    created integer := 0;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('paynode_outbox_partition_maintenance'));
    WHILE slot_start < now() + ahead LOOP
        name := 'outbox_event_p' || to_char(slot_start AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF outbox_event FOR VALUES FROM (%L) TO (%L)',
                               name, slot_start, slot_start + interval '30 minutes');
                created := created + 1;
            EXCEPTION
                WHEN check_violation OR invalid_object_definition THEN
                    RAISE NOTICE 'outbox partition % skipped: rows for it sit in DEFAULT', name;
                WHEN duplicate_table THEN
                    RAISE NOTICE 'outbox partition % already created', name;
            END;
        END IF;
        slot_start := slot_start + interval '30 minutes';
    END LOOP;
    RETURN created;
END;
$$;

CREATE OR REPLACE FUNCTION paynode_outbox_drop_drained(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    pending boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('paynode_outbox_partition_maintenance'));
    FOR part IN
        SELECT c.relname AS name
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'outbox_event'::regclass AND c.relname LIKE 'outbox_event_p%'
    LOOP
        IF (to_timestamp(substr(part.name, 15), 'YYYYMMDD_HH24MI')::timestamp AT TIME ZONE 'UTC') + interval '30 minutes' < now() - keep THEN
            BEGIN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE status <> %L)', part.name, 'SENT') INTO pending;
                IF NOT pending THEN
                    EXECUTE format('DROP TABLE %I', part.name);
                    dropped := dropped + 1;
                END IF;
            EXCEPTION WHEN undefined_table THEN
                RAISE NOTICE 'outbox partition % already dropped', part.name;
            END;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;
