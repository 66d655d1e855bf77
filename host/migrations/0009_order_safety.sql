-- Order safety (pipeline v2).
--
-- An order pins the *activation* of its adapter, not only the component:
-- the activation carries the config (base URL, account) its later calls
-- and status queries must keep using. Orders pinned before this migration
-- get the latest activation of their pinned component.
ALTER TABLE payment_orders ADD COLUMN adapter_activation_id bigint REFERENCES plugin_activations (id);
UPDATE payment_orders o SET adapter_activation_id =
    (SELECT max(a.id) FROM plugin_activations a WHERE a.slot = 'psp-adapter' AND a.sha256 = o.adapter_sha256)
WHERE o.adapter_sha256 IS NOT NULL;

-- The review janitor: how many status re-checks an order in REQUIRES_REVIEW
-- has had, and when the next one is due (NULL: left to an admin).
ALTER TABLE payment_orders ADD COLUMN review_checks integer NOT NULL DEFAULT 0;
ALTER TABLE payment_orders ADD COLUMN next_review_at timestamptz;
CREATE INDEX payment_orders_review_due_idx ON payment_orders (next_review_at) WHERE next_review_at IS NOT NULL;

-- A claim is a lease: a second holder (after a rebalance on a broker that
-- does not fence) waits until it expires before it settles the attempt.
ALTER TABLE psp_attempts ADD COLUMN lease_until timestamptz;
UPDATE psp_attempts SET lease_until = claimed_at;
ALTER TABLE psp_attempts ALTER COLUMN lease_until SET NOT NULL;
