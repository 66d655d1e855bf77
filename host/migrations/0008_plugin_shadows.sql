-- Shadow candidates: a stored version that runs beside the active posting
-- rules on live traffic; its journals are diffed and counted, never
-- applied. Append-only like plugin_activations: the latest row per slot
-- holds, and a NULL sha256 turns the shadow off. Only pure slots may be
-- shadowed: a shadow PSP adapter would make real charges.
CREATE TABLE plugin_shadows (
    id      bigserial PRIMARY KEY,
    slot    text        NOT NULL CHECK (slot IN ('posting-rules')),
    sha256  text        REFERENCES plugins (sha256),
    config  jsonb       NOT NULL DEFAULT '{}',
    set_by  text        NOT NULL,
    set_at  timestamptz NOT NULL DEFAULT now()
);
