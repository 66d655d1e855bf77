-- Double-entry ledger. Journal ids are deterministic
-- (payment order id + kind + key) and unique.
CREATE TABLE journal_entries (
    journal_id       text PRIMARY KEY,
    payment_order_id uuid        NOT NULL,
    seller_id        text        NOT NULL,
    kind             text        NOT NULL,
    currency         char(3)     NOT NULL,
    source_event_id  uuid        NOT NULL,
    rule_sha256      text        NOT NULL,
    trace_id         text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_entries_order_idx ON journal_entries (payment_order_id);

CREATE TABLE postings (
    journal_id   text    NOT NULL REFERENCES journal_entries (journal_id),
    account_code text    NOT NULL,
    side         text    NOT NULL CHECK (side IN ('debit', 'credit')),
    amount_minor bigint  NOT NULL CHECK (amount_minor > 0),
    currency     char(3) NOT NULL,
    PRIMARY KEY (journal_id, account_code)
);
CREATE INDEX postings_account_idx ON postings (account_code);

-- One row per source event: what was posted for it. A replay re-emits this
-- recording and never re-runs the rule.
CREATE TABLE ledger_recordings (
    source_event_id  uuid PRIMARY KEY,
    payment_order_id uuid        NOT NULL,
    rule_sha256      text        NOT NULL,
    recorded_event   jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_recordings_order_idx ON ledger_recordings (payment_order_id);

-- Balances, signed debit-positive (debits - credits); the API presents them
-- on each account's normal side.
CREATE TABLE account_balances (
    account_code  text PRIMARY KEY,
    currency      char(3)     NOT NULL,
    debit_minor   bigint      NOT NULL DEFAULT 0,
    credit_minor  bigint      NOT NULL DEFAULT 0,
    version       bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Per-journal idempotency for the balance consumer (not a watermark: journals
-- are not applied in id order).
CREATE TABLE applied_journals (
    journal_id text PRIMARY KEY REFERENCES journal_entries (journal_id),
    applied_at timestamptz NOT NULL DEFAULT now()
);
