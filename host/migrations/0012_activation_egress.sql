-- The egress policy an admin approved with an activation: the entries an
-- adapter's requests may reach and where each secret may be injected
-- ({"allow": [...], "secrets": [{"name", "entry", "headers"}]}). It travels
-- with the activation, so orders pinned to it keep it. NULL: no policy (the
-- node's own bootstrap, older activations); the slot's allow_hosts apply.
ALTER TABLE plugin_activations ADD COLUMN egress jsonb;
