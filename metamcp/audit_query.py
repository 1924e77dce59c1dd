"""Reading the audit log, as GET /api/v1/audit, GET /api/v1/usage and scripts/audit.py do:
pages of records behind an opaque cursor, and usage figures per key, server or tool."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from metamcp import audit_repository
from metamcp.audit_repository import Filters
from metamcp.db import Database

__all__ = ["Filters", "decode_cursor", "page", "usage", "utc"]

#: Groups of a usage report.
USAGE_BY = tuple(audit_repository.USAGE_GROUPS)


def utc(moment: datetime) -> datetime:
    """A time as given, or in UTC when it names no zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def encode_cursor(row: dict[str, Any]) -> str:
    """The cursor of the page after `row` (the last of a page): its (at, id), opaque."""
    raw = json.dumps([row["at"].isoformat(), row["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """(at, id) of a cursor this module made; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        if not isinstance(at, str) or not isinstance(row_id, int) or isinstance(row_id, bool):
            raise ValueError(cursor)
        return utc(datetime.fromisoformat(at)), row_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError("not a cursor of this audit log") from e


def page(db: Database, filters: Filters, limit: int, cursor: str | None = None
         ) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` records matching `filters`, newest first, after `cursor`; and the cursor
    of the next page (None when this one is the last)."""
    after = decode_cursor(cursor) if cursor else None
    with db.transaction() as cur:
        rows = audit_repository.search(cur, filters, limit + 1, after)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more else None


def usage(db: Database, by: str, filters: Filters) -> list[dict[str, Any]]:
    """Calls, errors and p50/p95 duration (ms) per group (`by`: key, server or tool)."""
    with db.transaction() as cur:
        return audit_repository.usage(cur, by, filters)
