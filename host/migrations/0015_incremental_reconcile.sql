-- The periodic reconciliation checks only what changed since its last round
-- (plus a margin), so its cost follows the write rate, not the data's size.
-- `paynode reconcile` still checks everything.

-- Where the last round stopped; one row.
CREATE TABLE reconcile_state (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Rows stamped before this were checked by an earlier round.
    checked_until  timestamptz NOT NULL,
    -- account sums below hold the postings of journals applied before this.
    sums_through   timestamptz NOT NULL
);

-- Open breaches found by earlier rounds; each round re-checks them and drops
-- the ones that cleared (an unapplied journal that got applied, say).
CREATE TABLE reconcile_breaches (
    check_name text        NOT NULL,
    subject    text        NOT NULL,
    found_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (check_name, subject)
);

-- Per account: the sums of the postings of every journal applied before
-- reconcile_state.sums_through (numeric: a sum of bigints can exceed bigint).
CREATE TABLE reconcile_account_sums (
    account_code text    PRIMARY KEY,
    debit_minor  numeric NOT NULL,
    credit_minor numeric NOT NULL
);

-- The windows. Append-only columns, or a partial index that a row enters
-- once (when it becomes final / succeeded): none of them turns a hot status
-- update into a non-HOT one that was HOT before.
CREATE INDEX journal_entries_created_idx ON journal_entries (created_at);
CREATE INDEX applied_journals_applied_idx ON applied_journals (applied_at);
CREATE INDEX payment_orders_final_idx ON payment_orders (updated_at)
    WHERE status IN ('SUCCEEDED', 'FAILED');
CREATE INDEX psp_attempts_succeeded_idx ON psp_attempts (finished_at)
    WHERE outcome = 'succeeded';
CREATE INDEX payment_orders_held_idx ON payment_orders (status)
    WHERE status IN ('PARKED', 'REQUIRES_REVIEW');
