-- Fixture-gated activation: a version is stored with the fixtures it passed
-- at upload (a JSON array of fixture files), and every activation re-runs
-- them against the stored bytes. NULL: stored without fixtures (the node's
-- own bootstrap or dev folder watch, or an upload from before this
-- migration); such a version can be rolled back to, never activated by hand.
ALTER TABLE plugins ADD COLUMN fixtures jsonb;
