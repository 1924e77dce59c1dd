-- Namespaces (servers grouped, with per-namespace tool status and overrides), the tools the
-- gateway has seen upstream, public endpoints of namespaces, and API keys limited to namespaces.
-- depends: 0002_mcp_sessions

CREATE TABLE namespaces (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name         TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    description  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE namespace_servers (
    namespace_id  UUID NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    server_id     UUID NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    PRIMARY KEY (namespace_id, server_id)
);
CREATE INDEX namespace_servers_server_id ON namespace_servers (server_id);

-- One row per tool an upstream lists; kept (with its overrides) when the upstream drops it,
-- marked unlisted, so a tool that comes back finds its settings again.
CREATE TABLE tools (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    server_id    UUID NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    definition   JSONB NOT NULL,
    listed       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (server_id, name)
);

-- A tool's status and overrides in one namespace; no row means active, unchanged.
CREATE TABLE namespace_tools (
    namespace_id  UUID NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    tool_id       UUID NOT NULL REFERENCES tools (id) ON DELETE CASCADE,
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    name          TEXT CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    title         TEXT,
    description   TEXT,
    annotations   JSONB NOT NULL DEFAULT '{}'::jsonb,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, tool_id)
);
CREATE UNIQUE INDEX namespace_tools_name ON namespace_tools (namespace_id, name) WHERE name IS NOT NULL;

CREATE TABLE endpoints (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name              TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    namespace_id      UUID NOT NULL REFERENCES namespaces (id) ON DELETE RESTRICT,
    description       TEXT NOT NULL DEFAULT '',
    auth_api_key      BOOLEAN NOT NULL DEFAULT TRUE,
    auth_query_param  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_namespace_id ON endpoints (namespace_id);

-- A scoped key reaches only the namespaces listed here; deleting a namespace narrows it,
-- never widens it (scoped stays true even when no namespace is left).
ALTER TABLE api_keys ADD COLUMN scoped BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE api_key_namespaces (
    key_id        BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    namespace_id  UUID NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, namespace_id)
);
CREATE INDEX api_key_namespaces_namespace_id ON api_key_namespaces (namespace_id);

-- Sessions of an endpoint serve only its namespace; public endpoints have sessions without a key.
ALTER TABLE mcp_sessions ADD COLUMN endpoint_id UUID REFERENCES endpoints (id) ON DELETE CASCADE;
ALTER TABLE mcp_sessions ALTER COLUMN key_id DROP NOT NULL;

-- Messages for a legacy SSE stream held by another process (picked up after NOTIFY).
CREATE TABLE sse_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES mcp_sessions (id) ON DELETE CASCADE,
    message     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sse_outbox_session_id ON sse_outbox (session_id, id);
