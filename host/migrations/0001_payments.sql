-- Payments and their per-seller payment orders. Amounts are integer minor
-- units; a payment is one currency.
CREATE TABLE payments (
    payment_id        uuid PRIMARY KEY,
    client_id         text        NOT NULL,
    buyer_id          text        NOT NULL,
    order_id          text        NOT NULL,
    total_amount_minor bigint     NOT NULL CHECK (total_amount_minor > 0),
    currency          char(3)     NOT NULL,
    trace_id          text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- A redelivered or re-sent request can never mint a second payment.
    CONSTRAINT payments_client_order_unique UNIQUE (client_id, order_id)
);

CREATE TABLE payment_orders (
    payment_order_id  uuid PRIMARY KEY,
    payment_id        uuid        NOT NULL REFERENCES payments (payment_id),
    seller_id         text        NOT NULL,
    amount_minor      bigint      NOT NULL CHECK (amount_minor > 0),
    currency          char(3)     NOT NULL,
    status            text        NOT NULL DEFAULT 'INITIATED'
        CHECK (status IN ('INITIATED', 'PENDING', 'SUCCEEDED', 'FAILED', 'REQUIRES_REVIEW', 'PARKED')),
    -- Key the PSP sees on every attempt of this order: a retry can never charge twice.
    psp_idempotency_key text      NOT NULL UNIQUE,
    -- Adapter version pinned at the first PSP call of this order.
    adapter_sha256    text,
    -- Highest attempt whose result was applied; older results are stale.
    last_applied_attempt integer  NOT NULL DEFAULT 0,
    -- Attempt number of the scheduled retry, and when it is due.
    next_attempt      integer,
    next_retry_at     timestamptz,
    psp_reference     text,
    failure_reason    text,
    final_attempt     integer,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_orders_one_per_seller UNIQUE (payment_id, seller_id)
);
CREATE INDEX payment_orders_payment_idx ON payment_orders (payment_id);
CREATE INDEX payment_orders_retry_due_idx ON payment_orders (next_retry_at) WHERE next_retry_at IS NOT NULL;
CREATE INDEX payment_orders_open_idx ON payment_orders (created_at) WHERE status IN ('INITIATED', 'PENDING');

-- Idempotency-Key records, scoped per authenticated client.
CREATE TABLE idempotency_keys (
    client_id       text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_sha256  text        NOT NULL,
    payment_id      uuid        NOT NULL REFERENCES payments (payment_id),
    response_status integer     NOT NULL,
    response_body   jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, idempotency_key)
);

-- One row per PSP call. Inserted *before* the call, so a redelivered request
-- finds the claim and never charges again.
CREATE TABLE psp_attempts (
    payment_order_id uuid        NOT NULL REFERENCES payment_orders (payment_order_id),
    attempt          integer     NOT NULL CHECK (attempt >= 1),
    idempotency_key  text        NOT NULL,
    component_sha256 text        NOT NULL,
    outcome          text CHECK (outcome IN ('succeeded', 'declined', 'transient', 'unknown')),
    code             text,
    message          text,
    psp_reference    text,
    latency_ms       bigint,
    settled_by_status boolean    NOT NULL DEFAULT false,
    -- How many times a component was invoked for this attempt (1 unless a bug).
    component_calls  integer     NOT NULL DEFAULT 0,
    trace_id         text        NOT NULL,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (payment_order_id, attempt)
);
