-- Which node made each PSP call (stages.instance_id): operators and the
-- hot-swap test need to see that every node switched versions.
ALTER TABLE psp_attempts ADD COLUMN node_id text NOT NULL DEFAULT '';
