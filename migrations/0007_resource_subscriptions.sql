-- Resource subscriptions of downstream sessions (resources/subscribe), and the mailbox that
-- carries any message to a session's stream (the legacy SSE outbox, now for GET streams too).
-- depends: 0004_key_roles

CREATE TABLE resource_subscriptions (
    session_id  TEXT NOT NULL REFERENCES mcp_sessions (id) ON DELETE CASCADE,
    uri         TEXT NOT NULL,
    server_id   UUID NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    -- The process whose upstream client holds the subscription upstream (ChangeBus.origin);
    -- it alone delivers the updates of this row, so each reaches the session once.
    holder      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, uri)
);
CREATE INDEX resource_subscriptions_server_uri ON resource_subscriptions (server_id, uri, holder);

-- Mailbox messages nobody took are dropped after a while: found by age.
CREATE INDEX sse_outbox_created_at ON sse_outbox (created_at);
