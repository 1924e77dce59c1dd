-- Prompts per namespace (status and overrides, like tools), a namespace's naming of tools and
-- prompts (prefixed `server__name`, or the upstream's own names), and the order of its servers
-- (the first server keeps a name or URI that several list).
-- depends: 0004_key_roles

ALTER TABLE namespaces ADD COLUMN naming TEXT NOT NULL DEFAULT 'prefixed'
    CHECK (naming IN ('prefixed', 'original'));

-- The order servers were attached (a server attached again keeps its place); rows that exist
-- already are numbered in server name order, the order they were served in until now.
CREATE SEQUENCE namespace_servers_position;
ALTER TABLE namespace_servers ADD COLUMN position BIGINT;
UPDATE namespace_servers ns SET position = ordered.n
  FROM (SELECT x.namespace_id, x.server_id, row_number() OVER (ORDER BY x.namespace_id, s.name) AS n
          FROM namespace_servers x JOIN mcp_servers s ON s.id = x.server_id) AS ordered
 WHERE ns.namespace_id = ordered.namespace_id AND ns.server_id = ordered.server_id;
DO $$ BEGIN
    PERFORM setval('namespace_servers_position', COALESCE((SELECT max(position) FROM namespace_servers), 0) + 1, false);
END $$;
ALTER TABLE namespace_servers ALTER COLUMN position SET DEFAULT nextval('namespace_servers_position'),
                              ALTER COLUMN position SET NOT NULL;
ALTER SEQUENCE namespace_servers_position OWNED BY namespace_servers.position;

-- One row per prompt an upstream lists; kept (with its overrides) when the upstream drops it,
-- marked unlisted, so a prompt that comes back finds its settings again.
CREATE TABLE prompts (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    server_id    UUID NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    definition   JSONB NOT NULL,
    listed       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (server_id, name)
);

-- A prompt's status and overrides in one namespace; no row means active, unchanged.
CREATE TABLE namespace_prompts (
    namespace_id  UUID NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    prompt_id     UUID NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    name          TEXT CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    title         TEXT,
    description   TEXT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, prompt_id)
);
CREATE UNIQUE INDEX namespace_prompts_name ON namespace_prompts (namespace_id, name) WHERE name IS NOT NULL;
CREATE INDEX namespace_prompts_prompt_id ON namespace_prompts (prompt_id);
