-- API keys and the upstream server registry.
-- depends:

CREATE TABLE api_keys (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    -- SHA-256 of the whole key; keys carry 256 random bits, so a fast hash is safe.
    key_hash      BYTEA NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ
);

CREATE TABLE mcp_servers (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name          TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$' AND position('__' in name) = 0),
    description   TEXT NOT NULL DEFAULT '',
    transport     TEXT NOT NULL CHECK (transport IN ('streamable_http', 'sse', 'stdio')),
    url           TEXT,
    command       TEXT,
    args          JSONB NOT NULL DEFAULT '[]'::jsonb,
    -- Values of env and headers, and bearer_token, are AES-256-GCM ciphertexts (metamcp.crypto).
    env           JSONB NOT NULL DEFAULT '{}'::jsonb,
    cwd           TEXT,
    headers       JSONB NOT NULL DEFAULT '{}'::jsonb,
    bearer_token  TEXT,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (transport = 'stdio' OR url IS NOT NULL),
    CHECK (transport <> 'stdio' OR command IS NOT NULL)
);
