"""Every SQL statement of the service: small functions over a cursor, returning plain rows.

Rows are dicts (RealDictCursor). Parameters are always bound; the only identifiers composed
into SQL are column names from the fixed SERVER_COLUMNS tuple.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from psycopg2.extensions import cursor as Cursor
from psycopg2.extras import Json

from metamcp.db import NOTIFY_CHANNEL

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


# --- API keys ---------------------------------------------------------------------------


def insert_key(cur: Cursor, name: str, key_hash: bytes, key_prefix: str) -> Row:
    cur.execute(
        "INSERT INTO api_keys (name, key_hash, key_prefix) VALUES (%s, %s, %s)"
        " RETURNING id, name, key_prefix, is_active, created_at, last_used_at",
        (name, key_hash, key_prefix),
    )
    return _returned(cur)


def list_keys(cur: Cursor, include_inactive: bool = False) -> list[Row]:
    cur.execute(
        "SELECT id, name, key_prefix, is_active, created_at, last_used_at"
        " FROM api_keys WHERE is_active OR %s ORDER BY id",
        (include_inactive,),
    )
    return [dict(row) for row in cur.fetchall()]


def get_key(cur: Cursor, key_id: int) -> Row | None:
    cur.execute(
        "SELECT id, name, key_prefix, is_active, created_at, last_used_at FROM api_keys WHERE id = %s",
        (key_id,),
    )
    return _one(cur)


def find_key_by_hash(cur: Cursor, key_hash: bytes) -> Row | None:
    cur.execute(
        "SELECT id, name, key_prefix, is_active, created_at, last_used_at"
        " FROM api_keys WHERE key_hash = %s",
        (key_hash,),
    )
    return _one(cur)


def set_key_active(cur: Cursor, key_id: int, active: bool) -> Row | None:
    cur.execute(
        "UPDATE api_keys SET is_active = %s WHERE id = %s"
        " RETURNING id, name, key_prefix, is_active, created_at, last_used_at",
        (active, key_id),
    )
    return _one(cur)


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


def list_servers(cur: Cursor) -> list[Row]:
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


def notify_change(cur: Cursor, topic: str, **details: Any) -> None:
    """Tell every process (after commit) that cached data of `topic` changed."""
    payload = json.dumps({"topic": topic, **details}, default=str)
    cur.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))


# --- MCP sessions -----------------------------------------------------------------------


def insert_session(
    cur: Cursor, session_id: str, key_id: int, protocol_version: str, client_info: dict[str, Any]
) -> Row:
    cur.execute(
        "INSERT INTO mcp_sessions (id, key_id, protocol_version, client_info)"
        " VALUES (%s, %s, %s, %s) RETURNING id, key_id, protocol_version, log_level",
        (session_id, key_id, protocol_version, Json(client_info)),
    )
    return _returned(cur)


def get_session(cur: Cursor, session_id: str) -> Row | None:
    cur.execute(
        "SELECT id, key_id, protocol_version, log_level FROM mcp_sessions WHERE id = %s",
        (session_id,),
    )
    return _one(cur)


def update_session(cur: Cursor, session_id: str, log_level: str | None) -> None:
    cur.execute(
        "UPDATE mcp_sessions SET log_level = %s, last_used_at = now() WHERE id = %s",
        (log_level, session_id),
    )


def touch_session(cur: Cursor, session_id: str) -> None:
    cur.execute("UPDATE mcp_sessions SET last_used_at = now() WHERE id = %s", (session_id,))


def delete_session(cur: Cursor, session_id: str) -> bool:
    cur.execute("DELETE FROM mcp_sessions WHERE id = %s", (session_id,))
    return cur.rowcount == 1


def purge_sessions(cur: Cursor, idle_seconds: int) -> int:
    cur.execute(
        "DELETE FROM mcp_sessions WHERE last_used_at < now() - make_interval(secs => %s)",
        (idle_seconds,),
    )
    return cur.rowcount
