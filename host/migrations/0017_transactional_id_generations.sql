-- Each life of a node's producing worker uses a transactional id of its
-- own generation ("<id>.g<N>"). A new life first re-initialises every
-- earlier generation not yet known to be fenced (which aborts a transaction
-- a killed life left open), then produces under its own, so no producer id
-- ever writes again after one of its transactions was aborted at a restart.
-- See kafka::producer_for_this_life for why.
CREATE TABLE kafka_transactional_ids (
    base        text    PRIMARY KEY,
    generation  integer NOT NULL,
    -- Every generation up to this one has been re-initialised (-1: none).
    fenced      integer NOT NULL DEFAULT -1
);
