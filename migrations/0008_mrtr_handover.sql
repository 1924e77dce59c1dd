-- Retries of 2026-07-28 clients that reach another process than the one holding their parked
-- upstream call: the client's answers (seq 0) for the holder, and what the holder produces
-- (seq 1, 2, ...) for the process serving the retry. Rows are taken (deleted) when read; those
-- of a process that died are dropped by age.
-- depends: 0007_resource_subscriptions

CREATE TABLE mrtr_handover (
    id          TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    message     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, seq)
);
CREATE INDEX mrtr_handover_created_at ON mrtr_handover (created_at);
