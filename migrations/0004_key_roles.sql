-- Roles of API keys (admin: the admin API and everything; client: MCP only) and an optional
-- per-key request rate.
-- depends: 0003_namespaces_endpoints

-- Existing keys keep what they could do: unscoped keys reached the admin API, scoped ones only
-- their namespaces' endpoints. Afterwards a key inserted without a role gets the least one.
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'client'));
UPDATE api_keys SET role = 'client' WHERE scoped;
ALTER TABLE api_keys ALTER COLUMN role SET DEFAULT 'client';
-- An admin key reaches everything, so it is never limited to namespaces.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_admin_unscoped CHECK (role = 'client' OR NOT scoped);

-- Requests per minute for this key; NULL: the METAMCP_RATE_LIMIT default.
ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER CHECK (rate_limit > 0);
