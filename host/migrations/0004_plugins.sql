-- Component registry: content-addressed bytes and an append-only activation
-- log per slot (the latest row is the active version; rollback appends).
CREATE TABLE plugins (
    sha256      text PRIMARY KEY,
    slot        text        NOT NULL CHECK (slot IN ('psp-adapter', 'retry-policy', 'posting-rules')),
    name        text        NOT NULL,
    version     text        NOT NULL,
    bytes       bytea       NOT NULL,
    uploaded_by text        NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plugin_activations (
    id           bigserial PRIMARY KEY,
    slot         text        NOT NULL,
    sha256       text        NOT NULL REFERENCES plugins (sha256),
    config       jsonb       NOT NULL DEFAULT '{}',
    action       text        NOT NULL CHECK (action IN ('activate', 'rollback')),
    activated_by text        NOT NULL,
    activated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plugin_activations_slot_idx ON plugin_activations (slot, id DESC);

-- Who did what, when, for every admin action.
CREATE TABLE admin_audit (
    id      bigserial PRIMARY KEY,
    actor   text        NOT NULL,
    action  text        NOT NULL,
    target  text        NOT NULL,
    details jsonb       NOT NULL DEFAULT '{}',
    at      timestamptz NOT NULL DEFAULT now()
);
