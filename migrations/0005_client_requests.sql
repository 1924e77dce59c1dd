-- Requests of upstreams relayed to clients: what each client declared it can be asked, and the
-- answers a client POSTed to another process than the one that relayed the request.
-- depends: 0004_key_roles

ALTER TABLE mcp_sessions ADD COLUMN client_capabilities JSONB NOT NULL DEFAULT '[]'::jsonb;

CREATE TABLE client_replies (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES mcp_sessions (id) ON DELETE CASCADE,
    message     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX client_replies_session_id ON client_replies (session_id);
