"""Downstream MCP sessions: rows in PostgreSQL, cached in each process.

Any worker (or replica on the same database) serves any session: a cache miss reads the row.
Deleting a session notifies every process, which drops it from its cache. Once a session is
cached, serving it makes no query; last_used_at is written at most every TOUCH_INTERVAL, best
effort. When the change listener comes back after losing its connection, cached sessions are
checked again at their next use; while the database is away they keep serving.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from metamcp import repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable

TOPIC = "sessions"
#: Seconds between last_used_at writes for one session.
TOUCH_INTERVAL = 600.0
#: Sessions unused this long are purged when the gateway starts.
IDLE_LIMIT_SECONDS = 7 * 24 * 3600
#: Levels of logging/setLevel, least to most severe (RFC 5424 names).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


@dataclass(frozen=True)
class Session:
    id: str
    key_id: int | None  # None on a public endpoint
    protocol_version: str
    log_level: str | None = None
    endpoint_id: UUID | None = None  # None: the session of /mcp

    def wants_log(self, level: str) -> bool:
        """Whether a notifications/message at `level` passes this session's logging/setLevel."""
        if self.log_level is None or level not in LOG_LEVELS:
            return True
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, Session] = {}
        self._touched: dict[str, float] = {}
        #: Cached sessions to read again at their next use (deleted meanwhile?).
        self._unverified: set[str] = set()
        self._lock = threading.Lock()

    def create(self, key_id: int | None, protocol_version: str, client_info: dict[str, Any],
               endpoint_id: UUID | None = None) -> Session:
        session_id = secrets.token_urlsafe(32)
        with self._db.transaction() as cur:
            repository.insert_session(cur, session_id, key_id, protocol_version, client_info, endpoint_id)
        session = Session(session_id, key_id, protocol_version, endpoint_id=endpoint_id)
        with self._lock:
            self._cache[session_id] = session
            self._touched[session_id] = time.monotonic()
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._cache.get(session_id)
        if session is None or session_id in self._unverified:
            try:
                with self._db.transaction() as cur:
                    row = repository.get_session(cur, session_id)
            except DatabaseUnavailable:
                if session is None:
                    raise
                return session  # cached, unconfirmed: serves while the database is away
            with self._lock:
                self._unverified.discard(session_id)
            if row is None:
                self.forget(session_id)
                return None
            session = Session(row["id"], row["key_id"], row["protocol_version"], row["log_level"],
                              row["endpoint_id"])
            with self._lock:
                self._cache[session_id] = session
        self._touch(session_id)
        return session

    def set_log_level(self, session: Session, level: str) -> Session:
        updated = replace(session, log_level=level)
        with self._db.transaction() as cur:
            repository.update_session(cur, session.id, level)
            repository.notify_change(cur, TOPIC, id=session.id)
        with self._lock:
            self._cache[session.id] = updated
        return updated

    def delete(self, session_id: str) -> bool:
        with self._db.transaction() as cur:
            deleted = repository.delete_session(cur, session_id)
            repository.notify_change(cur, TOPIC, id=session_id)
        self.forget(session_id)
        return deleted

    def forget(self, session_id: str | None = None) -> None:
        """Drop one session (or all) from this process's cache; the row stays."""
        with self._lock:
            if session_id is None:
                self._cache.clear()
                self._touched.clear()
                self._unverified.clear()
            else:
                self._cache.pop(session_id, None)
                self._touched.pop(session_id, None)
                self._unverified.discard(session_id)

    def on_change(self, message: dict[str, Any]) -> None:
        if message.get("resync"):
            with self._lock:
                self._unverified = set(self._cache)
        else:
            self.forget(message.get("id"))

    def _touch(self, session_id: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(session_id, 0.0) < TOUCH_INTERVAL:
            return
        self._touched[session_id] = now
        try:
            with self._db.transaction() as cur:
                repository.touch_session(cur, session_id)
        except DatabaseUnavailable:
            pass  # bookkeeping only: never fails a request (the outage is logged once)
