-- Refunds, PSP notifications (webhooks).
--
-- A refund belongs to one SUCCEEDED payment order and is sent to the
-- adapter activation the order was charged with. Its status machine:
-- REQUESTED -> SUCCEEDED | FAILED | REQUIRES_REVIEW, and REQUIRES_REVIEW ->
-- SUCCEEDED | FAILED when the review janitor's refund-status check or a
-- notification settles it.
CREATE TABLE refunds (
    refund_id           uuid        PRIMARY KEY,
    payment_order_id    uuid        NOT NULL REFERENCES payment_orders (payment_order_id),
    client_id           text        NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency            char(3)     NOT NULL,
    reason              text        NOT NULL,
    status              text        NOT NULL DEFAULT 'REQUESTED'
        CHECK (status IN ('REQUESTED', 'SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW')),
    -- Key the PSP sees on every attempt of this refund.
    psp_idempotency_key text        NOT NULL UNIQUE,
    -- Highest attempt whose result was applied; older results are stale.
    last_applied_attempt integer    NOT NULL DEFAULT 0,
    psp_reference       text,
    failure_reason      text,
    trace_id            text        NOT NULL,
    -- A refund is finalized once: the id of its RefundFinalized event, which
    -- is also the source id of its ledger recording.
    finalized_event_id  uuid        NOT NULL UNIQUE,
    -- The review janitor's re-checks of a refund in REQUIRES_REVIEW (as
    -- payment_orders): how many were made, and when the next one is due
    -- (NULL: none scheduled, out of review or the schedule spent).
    review_checks       integer     NOT NULL DEFAULT 0,
    next_review_at      timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_order_idx ON refunds (payment_order_id);
-- The incremental reconciliation's window over refunds (store/reconcile.rs).
-- Refunds are few and change a handful of times each: the index costs
-- little, although it makes their updates non-HOT.
CREATE INDEX refunds_updated_idx ON refunds (updated_at);
-- The janitor's due re-checks.
CREATE INDEX refunds_next_review_idx ON refunds (next_review_at)
    WHERE next_review_at IS NOT NULL;

-- One row per refund PSP call, inserted before the call (as psp_attempts).
CREATE TABLE refund_attempts (
    refund_id        uuid        NOT NULL REFERENCES refunds (refund_id),
    attempt          integer     NOT NULL CHECK (attempt >= 1),
    component_sha256 text        NOT NULL,
    outcome          text CHECK (outcome IN ('succeeded', 'declined', 'transient', 'unknown')),
    code             text,
    message          text,
    psp_reference    text,
    settled_by_status boolean    NOT NULL DEFAULT false,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (refund_id, attempt)
);

-- An Idempotency-Key record answers either a payment or a refund request.
ALTER TABLE idempotency_keys ALTER COLUMN payment_id DROP NOT NULL;
ALTER TABLE idempotency_keys ADD COLUMN refund_id uuid REFERENCES refunds (refund_id);
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_one_subject
    CHECK ((payment_id IS NULL) <> (refund_id IS NULL));

-- PSP notifications, applied once per (adapter, PSP event id).
CREATE TABLE psp_notifications (
    adapter          text        NOT NULL,
    event_id         text        NOT NULL,
    kind             text        NOT NULL,
    idempotency_key  text        NOT NULL,
    psp_reference    text,
    -- applied | unchanged | contradicted | unknown_subject
    result           text        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (adapter, event_id)
);
