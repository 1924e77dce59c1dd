-- Downstream MCP sessions: any worker or replica on this database can serve any session.
-- depends: 0001_initial

CREATE TABLE mcp_sessions (
    -- 256 random bits, URL-safe base64: unguessable and visible ASCII.
    id                TEXT PRIMARY KEY,
    key_id            BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    protocol_version  TEXT NOT NULL,
    client_info       JSONB NOT NULL DEFAULT '{}'::jsonb,
    log_level         TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX mcp_sessions_last_used_at ON mcp_sessions (last_used_at);
