-- The audit log (issue 13): one row per audited MCP request served (tools/call, prompts/get,
-- resources/read), written in batches off the request path, and one per admin change (keys,
-- servers, namespaces, endpoints), written in the transaction of the change with its before
-- and after, secrets masked. Rows outlive what they name (no foreign keys); they are purged by
-- age (METAMCP_AUDIT_RETENTION_DAYS).
-- depends: 0008_mrtr_handover

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    -- When the request arrived (calls) or the change committed (admin changes).
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind        TEXT NOT NULL CHECK (kind IN ('call', 'admin')),
    -- key (a request with an API key or JWT), anonymous (a public endpoint), cli, system.
    actor       TEXT NOT NULL,
    key_id      INTEGER,
    key_name    TEXT,
    request_id  TEXT,
    session_id  TEXT,
    endpoint    TEXT,
    -- The MCP method of a call; `<entity>.<verb>` of an admin change (server.create...).
    action      TEXT NOT NULL,
    server      TEXT,
    -- The tool or prompt as the client named it, or the URI; the changed object's id.
    target      TEXT,
    -- The name the upstream server knows the tool or prompt by.
    upstream_name TEXT,
    outcome     TEXT CHECK (outcome IN ('ok', 'tool_error', 'error')),
    error_code  INTEGER,
    http_status SMALLINT,
    duration_ms DOUBLE PRECISION,
    upstream_ms DOUBLE PRECISION,
    bytes       BIGINT,
    before      JSONB,
    after       JSONB,
    -- The gateway process that served it (a replica's host and worker pid).
    host        TEXT,
    pid         INTEGER
);
-- Newest first with keyset pagination on (at, id); the retention purge finds old rows here.
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_key ON audit_log (key_id, at DESC, id DESC);
CREATE INDEX audit_log_server ON audit_log (server, at DESC, id DESC);
CREATE INDEX audit_log_target ON audit_log (target, at DESC, id DESC);
-- Admin changes are few among many calls.
CREATE INDEX audit_log_admin ON audit_log (at DESC, id DESC) WHERE kind = 'admin';
