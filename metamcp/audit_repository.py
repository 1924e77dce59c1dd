"""The audit log's SQL (table audit_log, migration 0009): batched inserts of calls, one admin
change, the filtered keyset search, usage figures and the retention purge.

Kept apart from metamcp.repository, which is near its size limit. Parameters are always bound;
the only SQL composed here are fixed fragments chosen by the caller's filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extensions import cursor as Cursor
from psycopg2.extras import Json, execute_values

Row = dict[str, Any]

#: The columns of a call record, in the order metamcp.audit builds its tuples.
CALL_COLUMNS = (
    "at", "kind", "actor", "key_id", "key_name", "request_id", "session_id", "endpoint", "action",
    "server", "target", "upstream_name", "outcome", "error_code", "http_status", "duration_ms",
    "upstream_ms", "bytes", "host", "pid",
)
#: `at` arrives as seconds since the epoch (the request's arrival on the gateway's clock).
_CALL_TEMPLATE = "(to_timestamp(%s)" + ", %s" * (len(CALL_COLUMNS) - 1) + ")"

#: What a search returns of each row.
COLUMNS = ("id", "at", *CALL_COLUMNS[1:], "before", "after")

#: Advisory lock key of the retention purge (one process purges at a time).
PURGE_LOCK = 0x6D6D6370_0009


def insert_calls(cur: Cursor, rows: Sequence[tuple[Any, ...]]) -> None:
    """One multi-row INSERT for a batch of call records."""
    execute_values(
        cur, f"INSERT INTO audit_log ({', '.join(CALL_COLUMNS)}) VALUES %s",  # noqa: S608
        rows, template=_CALL_TEMPLATE, page_size=max(len(rows), 1),
    )


def insert_change(cur: Cursor, actor: str, key_id: int | None, key_name: str | None,
                  request_id: str | None, action: str, target: str | None, server: str | None,
                  before: Any, after: Any, host: str, pid: int) -> None:
    """An admin change, in the transaction that makes it."""
    cur.execute(
        "INSERT INTO audit_log (kind, actor, key_id, key_name, request_id, action, target, server,"
        " before, after, host, pid) VALUES ('admin', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (actor, key_id, key_name, request_id, action, target, server,
         None if before is None else Json(before), None if after is None else Json(after), host, pid),
    )


@dataclass(frozen=True)
class Filters:
    """What a search or usage report is limited to (None: no limit on that)."""

    key_id: int | None = None
    server: str | None = None
    tool: str | None = None
    outcome: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _where(filters: Filters) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (("key_id = %s", filters.key_id), ("server = %s", filters.server),
                          ("target = %s", filters.tool), ("outcome = %s", filters.outcome),
                          ("kind = %s", filters.kind), ("at >= %s", filters.since),
                          ("at < %s", filters.until)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return clauses, params


def search(cur: Cursor, filters: Filters, limit: int, after: tuple[datetime, int] | None = None) -> list[Row]:
    """Up to `limit` rows matching `filters`, newest first; `after`: the (at, id) of the last row
    of the previous page (keyset: rows inserted meanwhile never shift a page)."""
    clauses, params = _where(filters)
    if after is not None:
        clauses.append("(at, id) < (%s, %s)")
        params.extend(after)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cur.execute(
        f"SELECT {', '.join(COLUMNS)} FROM audit_log{where} ORDER BY at DESC, id DESC LIMIT %s",  # noqa: S608
        [*params, limit],
    )
    return [dict(row) for row in cur.fetchall()]


def newer(cur: Cursor, last_id: int, limit: int) -> list[Row]:
    """Rows inserted after the row `last_id`, in insertion order (for `tail --follow`)."""
    cur.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE id > %s ORDER BY id LIMIT %s",  # noqa: S608
                (last_id, limit))
    return [dict(row) for row in cur.fetchall()]


#: The groups a usage report can be made by: the columns grouped on and those shown.
USAGE_GROUPS = {
    "key": ("key_id", "key_id, (array_agg(key_name ORDER BY at DESC))[1] AS key_name"),
    "server": ("server", "server"),
    "tool": ("action, server, target", "action AS method, server, target AS tool"),
}


def usage(cur: Cursor, by: str, filters: Filters, limit: int = 1000) -> list[Row]:
    """Per group of calls: how many, how many did not succeed (of them, how many the tool
    reported), and the median and 95th percentile of their duration in milliseconds."""
    group, shown = USAGE_GROUPS[by]
    clauses, params = _where(Filters(since=filters.since, until=filters.until, key_id=filters.key_id,
                                     server=filters.server, tool=filters.tool))
    where = " AND ".join(["kind = 'call'", *clauses])
    cur.execute(
        f"SELECT {shown}, count(*) AS calls, count(*) FILTER (WHERE outcome <> 'ok') AS errors,"  # noqa: S608
        " count(*) FILTER (WHERE outcome = 'tool_error') AS tool_errors,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms"
        f" FROM audit_log WHERE {where} GROUP BY {group} ORDER BY calls DESC, {group} LIMIT %s",
        [*params, limit],
    )
    return [dict(row) for row in cur.fetchall()]


def try_purge_lock(cur: Cursor) -> bool:
    """The purge's transaction-scoped advisory lock, if no other process holds it."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS taken", (PURGE_LOCK,))
    row = cur.fetchone()
    return bool(row and dict(row)["taken"])


def purge(cur: Cursor, days: int, limit: int) -> int:
    """Delete up to `limit` rows older than `days` days, oldest first (through the at index)."""
    cur.execute(
        "DELETE FROM audit_log WHERE id = ANY(ARRAY(SELECT id FROM audit_log"
        " WHERE at < now() - make_interval(days => %s) ORDER BY at LIMIT %s))",
        (days, limit),
    )
    return int(cur.rowcount)
