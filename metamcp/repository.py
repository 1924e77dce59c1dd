"""Every SQL statement of the service: small functions over a cursor, returning plain rows.

Rows are dicts (RealDictCursor). Parameters are always bound; the only identifiers composed
into SQL are column names from the fixed SERVER_COLUMNS tuple and table names from ITEM_TABLES.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg2.errors
from psycopg2.extensions import cursor as Cursor
from psycopg2.extras import Json

from metamcp.db import Cursor as TransactionCursor
from metamcp.errors import Conflict
from metamcp.notify import LISTENER_NAME, NOTIFY_CHANNEL, Topic

Row = dict[str, Any]

SERVER_COLUMNS = (
    "name",
    "description",
    "transport",
    "url",
    "command",
    "args",
    "env",
    "cwd",
    "headers",
    "bearer_token",
    "is_active",
)
_JSON_COLUMNS = {"args", "env", "headers"}


def _one(cur: Cursor) -> Row | None:
    row = cur.fetchone()
    return dict(row) if row else None


def _returned(cur: Cursor) -> Row:
    row = cur.fetchone()
    assert row is not None, "INSERT ... RETURNING returns a row"
    return dict(row)


@contextmanager
def conflict_as(cur: Cursor, message: str,
                *violations: type[psycopg2.Error]) -> Iterator[None]:
    """Run writes in a savepoint; a violation of these constraint kinds (default: unique)
    becomes Conflict(message) and the transaction stays usable."""
    caught = violations or (psycopg2.errors.UniqueViolation,)
    cur.execute("SAVEPOINT conflict_as")
    try:
        yield
    except caught:
        cur.execute("ROLLBACK TO SAVEPOINT conflict_as")
        raise Conflict(message) from None


# --- API keys ---------------------------------------------------------------------------


_KEY = (
    "k.id, k.name, k.key_prefix, k.role, k.rate_limit, k.is_active, k.created_at, k.last_used_at, k.scoped,"
    " ARRAY(SELECT n.name FROM api_key_namespaces kn JOIN namespaces n ON n.id = kn.namespace_id"
    " WHERE kn.key_id = k.id ORDER BY n.name) AS namespaces"
)


def insert_key(cur: Cursor, name: str, key_hash: bytes, key_prefix: str, role: str = "admin",
               rate_limit: int | None = None) -> Row:
    cur.execute(
        "INSERT INTO api_keys (name, key_hash, key_prefix, role, rate_limit) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING id",
        (name, key_hash, key_prefix, role, rate_limit),
    )
    created: Row = _returned(cur)
    row = get_key(cur, created["id"])
    assert row is not None
    return row


def list_keys(cur: Cursor, include_inactive: bool = False) -> list[Row]:
    cur.execute(
        f"SELECT {_KEY} FROM api_keys k WHERE k.is_active OR %s ORDER BY k.id",  # noqa: S608
        (include_inactive,),
    )
    return [dict(row) for row in cur.fetchall()]


def get_key(cur: Cursor, key_id: int) -> Row | None:
    cur.execute(f"SELECT {_KEY} FROM api_keys k WHERE k.id = %s", (key_id,))  # noqa: S608
    return _one(cur)


def find_key_by_hash(cur: Cursor, key_hash: bytes) -> Row | None:
    cur.execute(f"SELECT {_KEY} FROM api_keys k WHERE k.key_hash = %s", (key_hash,))  # noqa: S608
    return _one(cur)


def key_namespace_ids(cur: Cursor, key_id: int) -> list[UUID]:
    cur.execute("SELECT namespace_id FROM api_key_namespaces WHERE key_id = %s", (key_id,))
    rows: list[Row] = [dict(row) for row in cur.fetchall()]
    return [row["namespace_id"] for row in rows]


def set_key_active(cur: Cursor, key_id: int, active: bool) -> Row | None:
    cur.execute("UPDATE api_keys SET is_active = %s WHERE id = %s", (active, key_id))
    return get_key(cur, key_id)


def update_key(cur: Cursor, key_id: int, name: str, active: bool, rate_limit: int | None) -> Row | None:
    cur.execute(
        "UPDATE api_keys SET name = %s, is_active = %s, rate_limit = %s WHERE id = %s",
        (name, active, rate_limit, key_id),
    )
    return get_key(cur, key_id)


def set_key_access(cur: Cursor, key_id: int, role: str, namespace_ids: list[UUID] | None) -> None:
    """The key's role and scope, in one statement (an admin key is never scoped).
    None: the key reaches everything; a list (maybe empty): only those namespaces."""
    cur.execute(
        "UPDATE api_keys SET role = %s, scoped = %s WHERE id = %s", (role, namespace_ids is not None, key_id)
    )
    cur.execute("DELETE FROM api_key_namespaces WHERE key_id = %s", (key_id,))
    for namespace_id in namespace_ids or []:
        cur.execute(
            "INSERT INTO api_key_namespaces (key_id, namespace_id) VALUES (%s, %s)", (key_id, namespace_id)
        )


def delete_key(cur: Cursor, key_id: int) -> bool:
    cur.execute("DELETE FROM api_keys WHERE id = %s", (key_id,))
    return cur.rowcount == 1


def touch_key(cur: Cursor, key_id: int) -> None:
    cur.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (key_id,))


# --- Upstream servers -------------------------------------------------------------------


def _server_values(fields: Mapping[str, Any]) -> list[Any]:
    return [Json(fields[c]) if c in _JSON_COLUMNS else fields[c] for c in fields]


def _check_columns(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - set(SERVER_COLUMNS)
    if unknown:
        raise ValueError(f"unknown server columns: {sorted(unknown)}")


def list_servers(cur: Cursor, lock: bool = False) -> list[Row]:
    """Every server by name; `lock` holds their rows until the transaction ends (a reseal)."""
    if lock:
        cur.execute("SELECT * FROM mcp_servers ORDER BY name FOR UPDATE")
    else:
        cur.execute("SELECT * FROM mcp_servers ORDER BY name")
    return [dict(row) for row in cur.fetchall()]


def get_server(cur: Cursor, server_id: UUID) -> Row | None:
    cur.execute("SELECT * FROM mcp_servers WHERE id = %s", (server_id,))
    return _one(cur)


def insert_server(cur: Cursor, fields: Mapping[str, Any]) -> Row:
    _check_columns(fields)
    columns = ", ".join(fields)
    placeholders = ", ".join(["%s"] * len(fields))
    cur.execute(
        f"INSERT INTO mcp_servers ({columns}) VALUES ({placeholders}) RETURNING *",  # noqa: S608
        _server_values(fields),
    )
    return _returned(cur)


def update_server(cur: Cursor, server_id: UUID, fields: Mapping[str, Any]) -> Row | None:
    _check_columns(fields)
    assignments = ", ".join(f"{column} = %s" for column in fields)
    cur.execute(
        f"UPDATE mcp_servers SET {assignments}, updated_at = now() WHERE id = %s RETURNING *",  # noqa: S608
        [*_server_values(fields), server_id],
    )
    return _one(cur)


def delete_server(cur: Cursor, server_id: UUID) -> bool:
    cur.execute("DELETE FROM mcp_servers WHERE id = %s", (server_id,))
    return cur.rowcount == 1


# --- Change notification ----------------------------------------------------------------


def notify_change(cur: TransactionCursor, topic: Topic, **details: Any) -> None:
    """Tell every process that cached data of `topic` changed, once the transaction commits
    (this process through its bus, the others through NOTIFY; see metamcp.notify)."""
    message = json.loads(json.dumps({"topic": topic.value, **details}, default=str))
    cur.published.append(message)
    payload = json.dumps({**message, "origin": cur.origin})
    cur.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))


# --- Readiness --------------------------------------------------------------------------


def ping(cur: Cursor) -> None:
    cur.execute("SELECT 1")


def applied_migrations(cur: Cursor) -> set[str]:
    """Ids of the migrations yoyo recorded as applied (its own bookkeeping table)."""
    cur.execute("SELECT migration_id FROM _yoyo_migration")
    return {dict(row)["migration_id"] for row in cur.fetchall()}


# --- MCP sessions -----------------------------------------------------------------------


def insert_session(
    cur: Cursor,
    session_id: str,
    key_id: int | None,
    protocol_version: str,
    client_info: dict[str, Any],
    endpoint_id: UUID | None = None,
    capabilities: list[str] | None = None,
) -> Row:
    cur.execute(
        "INSERT INTO mcp_sessions (id, key_id, protocol_version, client_info, endpoint_id, client_capabilities)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, key_id, protocol_version, log_level, endpoint_id",
        (session_id, key_id, protocol_version, Json(client_info), endpoint_id, Json(capabilities or [])),
    )
    return _returned(cur)


def update_session_capabilities(cur: Cursor, session_id: str, capabilities: list[str]) -> None:
    cur.execute("UPDATE mcp_sessions SET client_capabilities = %s, last_used_at = now() WHERE id = %s",
                (Json(capabilities), session_id))


def update_session(cur: Cursor, session_id: str, log_level: str | None) -> None:
    cur.execute(
        "UPDATE mcp_sessions SET log_level = %s, last_used_at = now() WHERE id = %s",
        (log_level, session_id),
    )


def use_session(cur: Cursor, session_id: str, idle_seconds: float) -> Row | None:
    """The session, touched, unless it is unknown or unused for idle_seconds (expired)."""
    cur.execute(
        "UPDATE mcp_sessions SET last_used_at = now()"
        " WHERE id = %s AND last_used_at >= now() - make_interval(secs => %s)"
        " RETURNING id, key_id, protocol_version, log_level, endpoint_id, client_capabilities",
        (session_id, idle_seconds),
    )
    return _one(cur)


def touch_session(cur: Cursor, session_id: str) -> bool:
    """Mark the session used; False when its row is gone."""
    cur.execute("UPDATE mcp_sessions SET last_used_at = now() WHERE id = %s", (session_id,))
    return cur.rowcount == 1


def delete_session(cur: Cursor, session_id: str) -> bool:
    cur.execute("DELETE FROM mcp_sessions WHERE id = %s", (session_id,))
    return cur.rowcount == 1


def count_listeners(cur: Cursor) -> int:
    """The processes listening for changes on this database (each with one connection)."""
    cur.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE %s"
                " AND datname = current_database()", (LISTENER_NAME + " %",))
    row: Row = _returned(cur)
    return int(row["n"])


def purge_sessions(cur: Cursor, idle_seconds: float, limit: int) -> int:
    """Delete up to `limit` sessions unused for idle_seconds, oldest first (via the
    last_used_at index); rows being touched right now are skipped, not waited for."""
    # = ANY(ARRAY(...)) rather than IN (...): the planner then deletes by primary key instead
    # of hashing a scan of the whole table.
    cur.execute(
        "DELETE FROM mcp_sessions WHERE id = ANY(ARRAY(SELECT id FROM mcp_sessions"
        " WHERE last_used_at < now() - make_interval(secs => %s)"
        " ORDER BY last_used_at LIMIT %s FOR UPDATE SKIP LOCKED))",
        (idle_seconds, limit),
    )
    return cur.rowcount


def try_advisory_xact_lock(cur: Cursor, key: int) -> bool:
    """Take a transaction-scoped advisory lock if it is free; False when another holds it."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS taken", (key,))
    row = _one(cur)
    return bool(row and row["taken"])


# --- Namespaces -------------------------------------------------------------------------

_NAMESPACE = "id, name, description, naming, created_at, updated_at"


def list_namespaces(cur: Cursor) -> list[Row]:
    cur.execute(f"SELECT {_NAMESPACE} FROM namespaces ORDER BY name")  # noqa: S608
    return [dict(row) for row in cur.fetchall()]


def get_namespace(cur: Cursor, namespace_id: UUID, lock: bool = False) -> Row | None:
    cur.execute(
        f"SELECT {_NAMESPACE} FROM namespaces WHERE id = %s" + (" FOR UPDATE" if lock else ""),  # noqa: S608
        (namespace_id,),
    )
    return _one(cur)


def find_namespaces(cur: Cursor, names_or_ids: list[str]) -> list[Row]:
    """Namespaces whose name or id (as text) is among `names_or_ids`."""
    cur.execute(
        f"SELECT {_NAMESPACE} FROM namespaces WHERE name = ANY(%s) OR id::text = ANY(%s) ORDER BY name",  # noqa: S608
        (names_or_ids, names_or_ids),
    )
    return [dict(row) for row in cur.fetchall()]


def insert_namespace(cur: Cursor, name: str, description: str, naming: str = "prefixed") -> Row:
    cur.execute(
        f"INSERT INTO namespaces (name, description, naming) VALUES (%s, %s, %s) RETURNING {_NAMESPACE}",  # noqa: S608
        (name, description, naming),
    )
    return _returned(cur)


def update_namespace(cur: Cursor, namespace_id: UUID, name: str, description: str, naming: str) -> Row | None:
    cur.execute(
        "UPDATE namespaces SET name = %s, description = %s, naming = %s, updated_at = now()"  # noqa: S608
        f" WHERE id = %s RETURNING {_NAMESPACE}",
        (name, description, naming, namespace_id),
    )
    return _one(cur)


def delete_namespace(cur: Cursor, namespace_id: UUID) -> bool:
    cur.execute("DELETE FROM namespaces WHERE id = %s", (namespace_id,))
    return cur.rowcount == 1


def namespace_servers(cur: Cursor, namespace_id: UUID) -> list[Row]:
    """The servers attached to a namespace in the order they were attached, with their status
    there and their own state."""
    cur.execute(
        "SELECT s.id, s.name, s.transport, s.is_active, ns.status FROM namespace_servers ns"
        " JOIN mcp_servers s ON s.id = ns.server_id WHERE ns.namespace_id = %s ORDER BY ns.position",
        (namespace_id,),
    )
    return [dict(row) for row in cur.fetchall()]


def attach_server(cur: Cursor, namespace_id: UUID, server_id: UUID, status: str) -> None:
    cur.execute(
        "INSERT INTO namespace_servers (namespace_id, server_id, status) VALUES (%s, %s, %s)"
        " ON CONFLICT (namespace_id, server_id) DO UPDATE SET status = EXCLUDED.status",
        (namespace_id, server_id, status),
    )


def detach_server(cur: Cursor, namespace_id: UUID, server_id: UUID) -> bool:
    cur.execute(
        "DELETE FROM namespace_servers WHERE namespace_id = %s AND server_id = %s",
        (namespace_id, server_id),
    )
    return cur.rowcount == 1


# --- Tools and prompts seen upstream, and their settings per namespace -------------------

#: The table of each kind of named item the gateway records (composed into SQL: fixed names only).
ITEM_TABLES = {"tools": "tools", "prompts": "prompts"}


def upsert_items(cur: Cursor, kind: str, server_id: UUID, definitions: list[dict[str, Any]]) -> int:
    """Record a server's current list of tools or prompts; only rows that differ are written.
    Returns how many."""
    table = ITEM_TABLES[kind]
    cur.execute(
        f"INSERT INTO {table} (server_id, name, definition)"  # noqa: S608
        " SELECT %s, d->>'name', d FROM jsonb_array_elements(%s::jsonb) AS d"
        " ON CONFLICT (server_id, name) DO UPDATE"
        " SET definition = EXCLUDED.definition, listed = TRUE, updated_at = now()"
        f" WHERE {table}.definition IS DISTINCT FROM EXCLUDED.definition OR NOT {table}.listed",
        (server_id, Json(definitions)),
    )
    written = cur.rowcount
    cur.execute(
        f"UPDATE {table} SET listed = FALSE, updated_at = now()"  # noqa: S608
        " WHERE server_id = %s AND listed AND NOT (name = ANY(%s))",
        (server_id, [d["name"] for d in definitions]),
    )
    return written + cur.rowcount


def namespace_tools(cur: Cursor, namespace_id: UUID, listed_only: bool = True) -> list[Row]:
    """The tools of the namespace's servers (those the upstream lists now, unless
    `listed_only` is false), with their settings there (NULL when none), first server first."""
    cur.execute(
        "SELECT t.id, t.server_id, s.name AS server_name, t.name AS original_name, t.definition, t.listed,"
        " ns.status AS server_status, nt.status, nt.name, nt.title, nt.description, nt.annotations"
        " FROM namespace_servers ns"
        " JOIN mcp_servers s ON s.id = ns.server_id"
        " JOIN tools t ON t.server_id = ns.server_id AND (t.listed OR NOT %s)"
        " LEFT JOIN namespace_tools nt ON nt.namespace_id = ns.namespace_id AND nt.tool_id = t.id"
        " WHERE ns.namespace_id = %s ORDER BY ns.position, t.name",
        (listed_only, namespace_id),
    )
    return [dict(row) for row in cur.fetchall()]


def upsert_namespace_tool(cur: Cursor, namespace_id: UUID, tool_id: UUID, settings: Mapping[str, Any]) -> None:
    cur.execute(
        "INSERT INTO namespace_tools (namespace_id, tool_id, status, name, title, description, annotations)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (namespace_id, tool_id) DO UPDATE SET status = EXCLUDED.status,"
        " name = EXCLUDED.name, title = EXCLUDED.title, description = EXCLUDED.description,"
        " annotations = EXCLUDED.annotations, updated_at = now()",
        (namespace_id, tool_id, settings["status"], settings["name"], settings["title"],
         settings["description"], Json(settings["annotations"])),
    )


def namespace_prompts(cur: Cursor, namespace_id: UUID, listed_only: bool = True) -> list[Row]:
    """namespace_tools() for prompts (which have no annotations: always empty here)."""
    cur.execute(
        "SELECT p.id, p.server_id, s.name AS server_name, p.name AS original_name, p.definition, p.listed,"
        " ns.status AS server_status, np.status, np.name, np.title, np.description,"
        " '{}'::jsonb AS annotations"
        " FROM namespace_servers ns"
        " JOIN mcp_servers s ON s.id = ns.server_id"
        " JOIN prompts p ON p.server_id = ns.server_id AND (p.listed OR NOT %s)"
        " LEFT JOIN namespace_prompts np ON np.namespace_id = ns.namespace_id AND np.prompt_id = p.id"
        " WHERE ns.namespace_id = %s ORDER BY ns.position, p.name",
        (listed_only, namespace_id),
    )
    return [dict(row) for row in cur.fetchall()]


def upsert_namespace_prompt(cur: Cursor, namespace_id: UUID, prompt_id: UUID, settings: Mapping[str, Any]) -> None:
    cur.execute(
        "INSERT INTO namespace_prompts (namespace_id, prompt_id, status, name, title, description)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (namespace_id, prompt_id) DO UPDATE SET status = EXCLUDED.status,"
        " name = EXCLUDED.name, title = EXCLUDED.title, description = EXCLUDED.description,"
        " updated_at = now()",
        (namespace_id, prompt_id, settings["status"], settings["name"], settings["title"],
         settings["description"]),
    )


# --- Endpoints --------------------------------------------------------------------------

_ENDPOINT = (
    "e.id, e.name, e.namespace_id, n.name AS namespace_name, e.description, e.auth_api_key,"
    " e.auth_query_param, e.created_at, e.updated_at"
)
ENDPOINT_COLUMNS = ("name", "namespace_id", "description", "auth_api_key", "auth_query_param")


def list_endpoints(cur: Cursor) -> list[Row]:
    cur.execute(
        f"SELECT {_ENDPOINT} FROM endpoints e JOIN namespaces n ON n.id = e.namespace_id ORDER BY e.name"  # noqa: S608
    )
    return [dict(row) for row in cur.fetchall()]


def get_endpoint(cur: Cursor, endpoint_id: UUID | None = None, name: str | None = None) -> Row | None:
    column, value = ("e.id", endpoint_id) if name is None else ("e.name", name)
    cur.execute(
        f"SELECT {_ENDPOINT} FROM endpoints e JOIN namespaces n ON n.id = e.namespace_id"  # noqa: S608
        f" WHERE {column} = %s",
        (value,),
    )
    return _one(cur)


def insert_endpoint(cur: Cursor, fields: Mapping[str, Any]) -> UUID:
    values = [fields[c] for c in ENDPOINT_COLUMNS]
    cur.execute(
        f"INSERT INTO endpoints ({', '.join(ENDPOINT_COLUMNS)}) VALUES (%s, %s, %s, %s, %s) RETURNING id",  # noqa: S608
        values,
    )
    row: Row = _returned(cur)
    return row["id"]


def update_endpoint(cur: Cursor, endpoint_id: UUID, fields: Mapping[str, Any]) -> bool:
    assignments = ", ".join(f"{c} = %s" for c in ENDPOINT_COLUMNS)
    cur.execute(
        f"UPDATE endpoints SET {assignments}, updated_at = now() WHERE id = %s",  # noqa: S608
        [*(fields[c] for c in ENDPOINT_COLUMNS), endpoint_id],
    )
    return cur.rowcount == 1


def delete_endpoint(cur: Cursor, endpoint_id: UUID) -> bool:
    cur.execute("DELETE FROM endpoints WHERE id = %s", (endpoint_id,))
    return cur.rowcount == 1


# --- Session mailbox (table sse_outbox) --------------------------------------------------


def push_mailbox(cur: Cursor, session_id: str, message: dict[str, Any], ttl: float) -> None:
    """Store a message for a stream of the session; its messages older than `ttl` go."""
    cur.execute("DELETE FROM sse_outbox WHERE session_id = %s AND created_at < now() - make_interval(secs => %s)",
                (session_id, ttl))
    cur.execute("INSERT INTO sse_outbox (session_id, message) VALUES (%s, %s)", (session_id, Json(message)))


def take_mailbox(cur: Cursor, session_id: str, ttl: float) -> list[dict[str, Any]]:
    """Remove the session's stored messages; returns those younger than `ttl`, oldest first."""
    cur.execute(
        "DELETE FROM sse_outbox WHERE id IN (SELECT id FROM sse_outbox WHERE session_id = %s"
        " ORDER BY id FOR UPDATE SKIP LOCKED)"
        " RETURNING id, message, created_at >= now() - make_interval(secs => %s) AS fresh",
        (session_id, ttl),
    )
    rows: list[Row] = [dict(row) for row in cur.fetchall()]
    return [row["message"] for row in sorted(rows, key=lambda r: r["id"]) if row["fresh"]]


def purge_mailbox(cur: Cursor, ttl: float) -> int:
    """Drop the messages no stream took within `ttl` seconds."""
    cur.execute("DELETE FROM sse_outbox WHERE created_at < now() - make_interval(secs => %s)", (ttl,))
    return cur.rowcount


# --- Resource subscriptions -------------------------------------------------------------


def subscribe_resource(cur: Cursor, session_id: str, uri: str, server_id: UUID, holder: str) -> int:
    """Record (or move to `holder`) the session's subscription; returns how many it has."""
    cur.execute(
        "INSERT INTO resource_subscriptions (session_id, uri, server_id, holder) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (session_id, uri) DO UPDATE SET server_id = excluded.server_id, holder = excluded.holder",
        (session_id, uri, server_id, holder),
    )
    cur.execute("SELECT count(*) AS n FROM resource_subscriptions WHERE session_id = %s", (session_id,))
    row: Row = _returned(cur)
    return int(row["n"])


def unsubscribe_resource(cur: Cursor, session_id: str, uri: str) -> Row | None:
    """Delete the session's subscription to `uri`; its server_id and holder, None if it had none."""
    cur.execute("DELETE FROM resource_subscriptions WHERE session_id = %s AND uri = %s"
                " RETURNING server_id, holder", (session_id, uri))
    row = cur.fetchone()
    return None if row is None else dict(row)


def resource_subscribers(cur: Cursor, server_id: UUID, uri: str, holder: str) -> list[str]:
    """The sessions whose subscription to `uri` of the server `holder` holds upstream."""
    cur.execute("SELECT session_id FROM resource_subscriptions WHERE server_id = %s AND uri = %s"
                " AND holder = %s ORDER BY session_id", (server_id, uri, holder))
    return [dict(row)["session_id"] for row in cur.fetchall()]


def held_subscriptions(cur: Cursor, server_id: UUID, holder: str) -> list[str]:
    """The URIs of the server that `holder` holds subscriptions to."""
    cur.execute("SELECT DISTINCT uri FROM resource_subscriptions WHERE server_id = %s AND holder = %s"
                " ORDER BY uri", (server_id, holder))
    return [dict(row)["uri"] for row in cur.fetchall()]


def adopt_subscriptions(cur: Cursor, holder: str) -> list[Row]:
    """Make `holder` hold the subscriptions of processes no longer listening (gone); returns
    their distinct server_id and uri."""
    cur.execute(
        "UPDATE resource_subscriptions AS s SET holder = %s WHERE holder <> %s AND NOT EXISTS"
        " (SELECT 1 FROM pg_stat_activity WHERE application_name = %s || ' ' || s.holder)"
        " RETURNING server_id, uri",
        (holder, holder, LISTENER_NAME),
    )
    rows: list[Row] = [dict(row) for row in cur.fetchall()]
    return list({(row["server_id"], row["uri"]): row for row in rows}.values())


# --- answers of clients to relayed requests ------------------------------------------------


def insert_client_reply(cur: Cursor, reply_id: str, session_id: str, message: dict[str, Any]) -> None:
    """A client's answer for the process that relayed the request (a repeat of an id is dropped)."""
    cur.execute(
        "INSERT INTO client_replies (id, session_id, message) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (reply_id, session_id, Json(message)),
    )


def take_client_reply(cur: Cursor, reply_id: str) -> Row | None:
    cur.execute("DELETE FROM client_replies WHERE id = %s RETURNING session_id, message", (reply_id,))
    return _one(cur)


# --- Multi round-trip hand-overs (metamcp.mcp.mrtr) -------------------------------------------


def is_listening(cur: Cursor, origin: str) -> bool:
    """Whether the process `origin` (ChangeBus.origin) listens for changes on this database now."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s || ' ' || %s"
                " AND datname = current_database()) AS listening", (LISTENER_NAME, origin))
    return bool(_returned(cur)["listening"])


def insert_handover(cur: Cursor, handover_id: str, seq: int, message: dict[str, Any]) -> None:
    """A retry's answers (seq 0), or the holder's n-th message back (seq n)."""
    cur.execute("INSERT INTO mrtr_handover (id, seq, message) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (handover_id, seq, Json(message)))


def take_handover_answers(cur: Cursor, handover_id: str) -> Row | None:
    cur.execute("DELETE FROM mrtr_handover WHERE id = %s AND seq = 0 RETURNING message", (handover_id,))
    return _one(cur)


def take_handover_replies(cur: Cursor, handover_id: str) -> list[Row]:
    cur.execute("DELETE FROM mrtr_handover WHERE id = %s AND seq > 0 RETURNING seq, message", (handover_id,))
    return [dict(row) for row in cur.fetchall()]


def purge_handovers(cur: Cursor, max_age_seconds: int) -> None:
    """Rows nobody took (their process died)."""
    cur.execute("DELETE FROM mrtr_handover WHERE created_at < now() - make_interval(secs => %s)",
                (max_age_seconds,))
