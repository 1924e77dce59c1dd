"""The audit log of calls: a sink of metamcp.observe that queues one record per audited MCP
request, and a writer thread that stores them in batches and purges old rows.

The sink runs in the request's thread after the response was sent, so it only builds a tuple
and puts it in a bounded queue without waiting: when the queue is full the record is dropped
and counted, never the call delayed. The writer takes what is queued every FLUSH_SECONDS (or
as soon as BATCH_ROWS are waiting) and writes it with one INSERT on a connection of its own
(not the request pool: it never competes with requests for one). A database outage is logged
once when it starts and once when it ends; meanwhile the writer retries its batch with a
growing pause and the queue overflows (counted). Admin changes are recorded elsewhere
(metamcp.audit_changes), in the transaction that makes them.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extras

from metamcp import audit_repository
from metamcp.db import first_line, is_connection_failure
from metamcp.observe import ERROR, Observation

logger = logging.getLogger(__name__)

#: The MCP methods whose requests are audited.
AUDITED = frozenset({"tools/call", "prompts/get", "resources/read"})
#: Longest text kept of a name or URI (a client chooses them).
MAX_TEXT = 2048

#: Told how many records were dropped (create_app points it at metamcp.metrics.audit_dropped).
report_dropped: Callable[[int], None] = lambda n: None  # noqa: E731


class AuditLog:
    """The queue, the writer thread and the retention purge of one process."""

    #: Records waiting to be written; more are dropped (and counted) until the writer catches up.
    QUEUE_SIZE = 10_000
    #: A batch is written when this many records wait, or FLUSH_SECONDS after its first one.
    BATCH_ROWS = 500
    FLUSH_SECONDS = 0.5
    #: Longest pause between retries of a batch while the database is away.
    MAX_RETRY_PAUSE = 5.0
    #: stop() writes what is queued for at most this long (a graceful stop ends within 3 s).
    STOP_SECONDS = 1.0
    #: Seconds between retention purges, and rows one purge deletes per transaction / at most.
    PURGE_INTERVAL = 3600.0
    PURGE_BATCH = 5000
    PURGE_MAX = 200_000

    def __init__(self, url: str, retention_days: int = 30, *, queue_size: int | None = None,
                 flush_seconds: float | None = None, purge_interval: float | None = None) -> None:
        self._url = url
        #: Rows older than this many days are purged; 0 keeps them forever.
        self.retention_days = retention_days
        self.flush_seconds = flush_seconds or self.FLUSH_SECONDS
        self.purge_interval = purge_interval or self.PURGE_INTERVAL
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(queue_size or self.QUEUE_SIZE)
        #: Records dropped because the queue was full or the database away (this process).
        self.dropped = 0
        #: Records written (this process).
        self.written = 0
        self._host = socket.gethostname()
        self._pid = os.getpid()  # made in the worker (create_app runs after the fork)
        self._drop_lock = threading.Lock()
        self._conn: Any = None
        self._down_since: float | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_purge = 0.0

    # --- the request side ------------------------------------------------------------------

    def sink(self, observation: Observation) -> None:
        """Queue the observation's audited operations (an observe sink: cheap, never waits).

        A request refused before any operation began (a call over a limit) is one record too,
        its outcome error without a code and its HTTP status kept."""
        key_id = observation.key_id
        common = (observation.at, "call", "key" if key_id is not None else "anonymous", key_id,
                  observation.key_name, observation.request_id, observation.session, observation.endpoint)
        tail = (observation.status, observation.duration * 1000.0)
        records = [(*common, op.method, op.server, op.name, op.upstream_name, op.outcome, op.error_code,
                    *tail, op.upstream_seconds * 1000.0, observation.bytes_out, self._host, self._pid)
                   for op in observation.operations if op.method in AUDITED]
        if not records and not observation.operations and observation.mcp_method in AUDITED:
            records = [(*common, observation.mcp_method, None, None, None, ERROR, None, *tail, 0.0,
                        observation.bytes_out, self._host, self._pid)]
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._drop(1)

    def _drop(self, n: int) -> None:
        with self._drop_lock:  # request threads overflow at once; += alone could lose counts
            self.dropped += n
        report_dropped(n)

    # --- the writer thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metamcp-audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued (for at most STOP_SECONDS), then end the thread."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)  # wakes the writer at once
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(self.STOP_SECONDS + 0.25)
        self._close()

    def _run(self) -> None:
        pause = 0.0
        batch: list[tuple[Any, ...]] = []
        while not self._stopping.is_set():
            if not batch:
                batch = self._take()
            if batch and not self._write(batch):
                pause = min(max(pause * 2, self.flush_seconds), self.MAX_RETRY_PAUSE)
                self._stopping.wait(pause)
                continue
            batch, pause = [], 0.0
            self._purge_when_due()
        self._flush(batch)

    def _take(self) -> list[tuple[Any, ...]]:
        """The next batch: waits for a first record, then up to flush_seconds for more."""
        try:
            first = self._queue.get(timeout=self.flush_seconds)
        except queue.Empty:
            return []
        batch = [] if first is None else [first]
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.BATCH_ROWS and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                record = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if record is not None:
                batch.append(record)
        return batch

    def _flush(self, batch: list[tuple[Any, ...]]) -> None:
        """At stop: the pending batch and what is queued, until STOP_SECONDS are spent."""
        deadline = time.monotonic() + self.STOP_SECONDS
        while True:
            while len(batch) < self.BATCH_ROWS:
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
                if record is not None:
                    batch.append(record)
            if not batch:
                return
            if time.monotonic() > deadline or not self._write(batch):
                self._drop(len(batch) + self._queue.qsize())
                return
            batch = []

    def _write(self, batch: list[tuple[Any, ...]]) -> bool:
        """Store a batch; False (logged once per outage) when the database cannot be reached.
        A batch the database refuses for its content is dropped, not retried."""
        rows = [_clean(record) for record in batch]
        try:
            with self._connection() as conn, conn.cursor() as cur:
                audit_repository.insert_calls(cur, rows)
        except psycopg2.Error as error:
            if self._conn is not None and not is_connection_failure(error, self._conn):
                logger.error("audit records dropped, the database refused them: %s", first_line(error))
                self._drop(len(batch))
                return True
            self._failed(error)
            return False
        self._recovered()
        self.written += len(batch)
        return True

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self._url, connect_timeout=3, application_name="metamcp audit",
                                          cursor_factory=psycopg2.extras.RealDictCursor)
        return self._conn

    def _failed(self, error: psycopg2.Error) -> None:
        self._close()
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("audit log: database unreachable (%s); retrying, records beyond the queue "
                           "of %d are dropped and counted", first_line(error), self._queue.maxsize)

    def _recovered(self) -> None:
        if self._down_since is not None:
            logger.warning("audit log: database reachable again after %.1f s (%d records dropped so far)",
                           time.monotonic() - self._down_since, self.dropped)
            self._down_since = None

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    # --- retention ------------------------------------------------------------------------

    def _purge_when_due(self) -> None:
        now = time.monotonic()
        if self.retention_days <= 0 or now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        try:
            self.purge()
        except psycopg2.Error as error:
            self._close()
            logger.warning("audit log: retention purge failed: %s", first_line(error))

    def purge(self) -> int:
        """Delete rows older than the retention, a batch per transaction, if no other process
        is purging (advisory lock); returns how many."""
        if self.retention_days <= 0:
            return 0
        deleted = 0
        while deleted < self.PURGE_MAX:
            with self._connection() as conn, conn.cursor() as cur:
                if not audit_repository.try_purge_lock(cur):
                    break
                n = audit_repository.purge(cur, self.retention_days, self.PURGE_BATCH)
            deleted += n
            if n < self.PURGE_BATCH:
                break
        if deleted:
            logger.info("audit log: purged %d records older than %d days", deleted, self.retention_days)
        return deleted


def _clean(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A record as the database takes it: text bounded, without NUL (which it cannot store)."""
    return tuple(value[:MAX_TEXT].replace("\0", "\ufffd") if isinstance(value, str) else value
                 for value in record)
