-- A partition is drained only when every row in it was SENT: quarantined
-- rows wait for an operator and must not be dropped with their partition.
CREATE OR REPLACE FUNCTION paynode_outbox_drop_drained(keep interval) RETURNS integer
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
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE status <> %L)', part.name, 'SENT') INTO pending;
            IF NOT pending THEN
                EXECUTE format('DROP TABLE %I', part.name);
                dropped := dropped + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;
