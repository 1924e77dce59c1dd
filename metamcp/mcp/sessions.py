"""Downstream MCP sessions: rows in PostgreSQL, cached in each process, expired when idle.

Any worker (or replica on the same database) serves any session: a cache miss reads the row.
Deleting a session notifies every process, which drops it from its cache and confirms; the
DELETE returns once all have, so no worker serves it from its cache afterwards. Once a session is
cached, serving it makes no query; last_used_at is written at most every touch interval, best
effort. A session unused for the idle timeout expires: it is no longer served anywhere, and
each process runs a SessionPurger that deletes expired rows. When the change listener comes
back after losing its connection, cached sessions are checked again at their next use; while
the database is away they keep serving.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from metamcp import metrics, repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp.protocol import MODERN_VERSIONS
from metamcp.mcp.upstream.interface import ClientMeta
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

#: Longest pause between last_used_at writes for one session (shorter for short timeouts).
TOUCH_INTERVAL = 600.0
#: Sessions one process keeps cached; past this the least recently used one is dropped (it is
#: read again from the database if it comes back), so abandoned sessions cost bounded memory.
CACHE_ENTRIES = 4096
#: Longest pause between two purges by one process (shorter for short timeouts).
PURGE_INTERVAL = 300.0
#: Rows one purge transaction deletes at most.
PURGE_BATCH = 5000
#: The PostgreSQL advisory lock that lets one process at a time purge ("mmcp" + 1).
PURGE_LOCK = 0x6D6D6370_0001
#: Longest wait of a DELETE for the other processes to confirm they dropped the session.
ACK_TIMEOUT = 0.5
#: Client capabilities a session keeps: the requests the gateway may relay to the client.
CLIENT_CAPABILITIES = ("sampling", "elicitation", "roots")
#: Levels of logging/setLevel, least to most severe (RFC 5424 names).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


@dataclass(frozen=True)
class Session:
    """One downstream session, as every process reads it from its row."""

    id: str
    key_id: int | None  # None on a public endpoint
    protocol_version: str
    log_level: str | None = None
    endpoint_id: UUID | None = None  # None: the session of /mcp
    #: What the client declared it can be asked (metamcp.mcp.relay), e.g. "sampling",
    #: "elicitation", "elicitation.url", "roots".
    capabilities: frozenset[str] = frozenset()

    @property
    def modern(self) -> bool:
        """A 2026-07-28 request's stand-in: made per request from its `_meta`, never stored."""
        return self.protocol_version in MODERN_VERSIONS

    def wants_log(self, level: str) -> bool:
        """Whether a notifications/message at `level` passes this session's logging/setLevel (a
        2026-07-28 request: its `_meta` logLevel; none asked, none sent)."""
        if self.log_level is None:
            return not self.modern
        if level not in LOG_LEVELS:
            return True
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)


@dataclass
class _Entry:
    session: Session
    #: When this process last served the session, and last wrote its last_used_at (monotonic).
    seen: float
    written: float


class SessionStore:
    """Why a cached session can never outlive its row: this process writes last_used_at at least
    every touch interval T while it serves the session, and serves a cached entry only while it
    was seen here within idle - 2T. So whenever it serves one, the row's last_used_at is younger
    than the idle timeout (with T to spare for clock drift) and no purge can have deleted it."""

    def __init__(self, db: Database, idle_timeout: float = 86400.0,
                 cache_entries: int = CACHE_ENTRIES) -> None:
        self._db = db
        self.idle_timeout = idle_timeout
        self.touch_interval = min(TOUCH_INTERVAL, idle_timeout / 10)
        self._cache_lifetime = idle_timeout - 2 * self.touch_interval
        self._cache_entries = cache_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        #: Cached sessions to read again at their next use (deleted meanwhile?).
        self._unverified: set[str] = set()
        self._lock = threading.Lock()
        #: Sessions this process is deleting, and the processes that confirmed dropping them.
        self._acks: dict[str, set[str]] = {}
        self._acked = threading.Condition()

    def create(self, key_id: int | None, protocol_version: str, client_info: dict[str, Any],
               endpoint_id: UUID | None = None, capabilities: frozenset[str] = frozenset()) -> Session:
        session_id = secrets.token_urlsafe(32)
        with self._db.transaction() as cur:
            repository.insert_session(cur, session_id, key_id, protocol_version, client_info, endpoint_id,
                                      sorted(capabilities))
        session = Session(session_id, key_id, protocol_version, endpoint_id=endpoint_id,
                          capabilities=capabilities)
        self._keep(session)
        metrics.session_created()
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session, or None when it is unknown, deleted or expired. A cached one keeps
        serving while the database is away."""
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(session_id)
            if entry is not None and now - entry.seen > self._cache_lifetime:
                del self._cache[session_id]  # maybe purged meanwhile: ask the database
                entry = None
            if entry is not None:
                self._cache.move_to_end(session_id)
                entry.seen = now
                if now - entry.written < self.touch_interval and session_id not in self._unverified:
                    return entry.session
                entry.written = now
        if entry is not None:
            try:
                with self._db.transaction() as cur:
                    alive = repository.touch_session(cur, session_id)
            except DatabaseUnavailable:
                return entry.session  # cached, unconfirmed: serves while the database is away
            with self._lock:
                self._unverified.discard(session_id)
            if alive:
                return entry.session
            self.forget(session_id)  # deleted without our hearing of it
            return None
        with self._db.transaction() as cur:
            row = repository.use_session(cur, session_id, self.idle_timeout)
        if row is None:
            return None
        session = Session(row["id"], row["key_id"], row["protocol_version"], row["log_level"],
                          row["endpoint_id"], frozenset(row["client_capabilities"]))
        self._keep(session)
        return session

    def set_capabilities(self, session: Session, capabilities: frozenset[str]) -> Session:
        """What a legacy SSE client declared at initialize (its session began before)."""
        updated = replace(session, capabilities=capabilities)
        with self._db.transaction() as cur:
            repository.update_session_capabilities(cur, session.id, sorted(capabilities))
            repository.notify_change(cur, Topic.SESSIONS, id=session.id)
        self._keep(updated)
        return updated

    def set_log_level(self, session: Session, level: str) -> Session:
        updated = replace(session, log_level=level)
        with self._db.transaction() as cur:
            repository.update_session(cur, session.id, level)
            repository.notify_change(cur, Topic.SESSIONS, id=session.id)
        self._keep(updated)
        return updated

    def delete(self, session_id: str) -> bool:
        """Delete the session; returns once every listening process has dropped it from its
        cache (or after ACK_TIMEOUT), so its next request anywhere is 404 and caches stay
        query-free."""
        with self._acked:
            self._acks[session_id] = set()
        try:
            with self._db.transaction() as cur:
                deleted = repository.delete_session(cur, session_id)
                others = repository.count_listeners(cur) - 1  # this process's own listener
                repository.notify_change(cur, Topic.SESSIONS, id=session_id, deleted=True)
            self.forget(session_id)
            if deleted:
                metrics.sessions_ended("deleted")
            if deleted and others > 0:
                with self._acked:
                    if not self._acked.wait_for(lambda: len(self._acks[session_id]) >= others, ACK_TIMEOUT):
                        logger.info("a deleted session was not confirmed by every process in time")
        finally:
            with self._acked:
                self._acks.pop(session_id, None)
        return deleted

    def forget(self, session_id: str | None = None) -> None:
        """Drop one session (or all) from this process's cache; the row stays."""
        with self._lock:
            if session_id is None:
                self._cache.clear()
                self._unverified.clear()
            else:
                self._cache.pop(session_id, None)
                self._unverified.discard(session_id)

    def on_change(self, message: dict[str, Any]) -> None:
        session_id = message.get("id")
        if message.get("resync"):
            with self._lock:
                self._unverified = set(self._cache)
        elif "ack" in message:  # a process dropped a session: maybe one we are deleting
            with self._acked:
                acks = self._acks.get(str(session_id))
                if acks is not None:
                    acks.add(str(message["ack"]))
                    self._acked.notify_all()
        else:
            self.forget(session_id)
            if message.get("deleted") and session_id not in self._acks:  # another process deletes it
                with self._db.transaction() as cur:
                    repository.notify_change(cur, Topic.SESSIONS, id=session_id, ack=self._db.bus.origin)

    def prune(self) -> int:
        """Drop the cached entries too old to be served; returns how many were dropped."""
        cutoff = time.monotonic() - self._cache_lifetime
        with self._lock:
            stale = [sid for sid, entry in self._cache.items() if entry.seen < cutoff]
            for session_id in stale:
                del self._cache[session_id]
        return len(stale)

    def cached(self) -> int:
        return len(self._cache)

    def _keep(self, session: Session) -> None:
        """Cache a session just read or written (its last_used_at is now)."""
        now = time.monotonic()
        with self._lock:
            self._cache[session.id] = _Entry(session, now, now)
            self._cache.move_to_end(session.id)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)


class SessionPurger:
    """Deletes expired sessions (their mailboxes and subscriptions go with them), and mailbox
    messages no stream took, every so often.

    Every process runs one, so the purge needs no coordinator and survives any worker's death;
    a random start and interval spread the processes out, and an advisory lock lets only one
    at a time do the work (the DELETE walks the last_used_at index, so the others' runs are cheap).
    """

    def __init__(self, store: SessionStore, db: Database,
                 purge_mailbox: Callable[[], int] | None = None) -> None:
        self._store = store
        self._db = db
        #: Also drops the mailbox messages no stream took in time.
        self._purge_mailbox = purge_mailbox
        self.interval = min(PURGE_INTERVAL, store.idle_timeout / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metamcp-session-purge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def purge(self) -> int | None:
        """Delete expired rows in batches; None when another process holds the purge lock."""
        total = 0
        while True:
            with self._db.transaction() as cur:
                if not repository.try_advisory_xact_lock(cur, PURGE_LOCK):
                    return None if total == 0 else total
                deleted = repository.purge_sessions(cur, self._store.idle_timeout, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH or self._stop.is_set():
                return total

    def _run(self) -> None:
        delay = random.uniform(0, self.interval)  # noqa: S311 - spreading load, not security
        while not self._stop.wait(delay):
            delay = self.interval * random.uniform(0.8, 1.2)  # noqa: S311
            self._store.prune()
            try:
                purged = self.purge()
                if self._purge_mailbox is not None:
                    self._purge_mailbox()
            except Exception as e:  # noqa: BLE001 - boundary: the thread must outlive an outage
                logger.warning("purging idle MCP sessions failed (%s); retrying later", type(e).__name__)
                continue
            if purged:
                metrics.sessions_ended("expired", purged)
                logger.info("purged %s idle MCP sessions", purged)


def client_capabilities(value: Any) -> frozenset[str]:
    """The names kept of a client's declared capabilities: those the gateway may relay requests
    for, and their modes one level down (bounded, whatever the client sends)."""
    if not isinstance(value, dict):
        return frozenset()
    names: set[str] = set()
    for name in CLIENT_CAPABILITIES:
        declared = value.get(name)
        if isinstance(declared, dict):
            names.add(name)
            names.update(f"{name}.{mode}" for mode in ("form", "url", "listChanged", "tools")
                         if mode in declared)
    return frozenset(names)


def capabilities_object(names: frozenset[str]) -> dict[str, Any]:
    """The capabilities object a session's names stand for (client_capabilities() reversed):
    what the gateway declares to a 2026-07-28 upstream on the client's behalf."""
    declared: dict[str, Any] = {}
    for name in CLIENT_CAPABILITIES:
        if name in names:
            declared[name] = {mode: {} for mode in ("form", "url", "tools") if f"{name}.{mode}" in names}
            if f"{name}.listChanged" in names:
                declared[name]["listChanged"] = True
    return declared


def client_meta(session: Session) -> ClientMeta:
    """Whom a call is made for, as the upstream may see it: the session's era, what its client
    can be asked, and its log level (a 2025 session without logging/setLevel takes every level,
    as 2025 servers send them; a 2026-07-28 request only what its `_meta` asked for)."""
    level = session.log_level if session.log_level is not None or session.modern else LOG_LEVELS[0]
    return ClientMeta(session.modern, capabilities_object(session.capabilities), level)
