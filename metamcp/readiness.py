"""Readiness for load balancers: the database answers and every migration in migrations/ is applied.

A check runs on its own thread with a short deadline, is shared by concurrent probes and is
reused for a moment, so a probe never waits longer than CHECK_TIMEOUT and a flood of probes
costs one query. Once all migrations were seen applied, only reachability is checked again.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import psycopg2.extras

from metamcp import repository
from metamcp.db import migration_ids

logger = logging.getLogger(__name__)

#: Longest wait of a probe for the database (libpq's connect timeout is whole seconds, >= 2).
CHECK_TIMEOUT = 2.0
#: Seconds a result is reused by the next probes.
FRESH_FOR = 1.0


@dataclass(frozen=True)
class ReadyState:
    reachable: bool
    migrations_applied: bool
    #: What is missing, for humans; None when ready.
    problem: str | None = None

    @property
    def ready(self) -> bool:
        return self.reachable and self.migrations_applied


class Readiness:
    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._running: Future[ReadyState] | None = None
        self._last: tuple[float, ReadyState] | None = None
        #: Migrations never go away while the process runs: once applied, not checked again.
        self._migrated = False

    def check(self) -> ReadyState:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last[0] < FRESH_FOR:
                return self._last[1]
            if self._running is None or self._running.done():
                self._running = Future()
                threading.Thread(target=self._probe, args=(self._running,), daemon=True,
                                 name="metamcp-readiness").start()
            running = self._running
        try:
            return running.result(timeout=CHECK_TIMEOUT + 0.5)
        except FutureTimeout:
            return ReadyState(False, self._migrated,
                              f"the database did not answer within {CHECK_TIMEOUT:g} s")

    def _probe(self, future: Future[ReadyState]) -> None:
        try:
            state = self._query()
        except Exception as e:  # noqa: BLE001 - boundary: a probe gets an answer, never a hang
            logger.warning("readiness check failed: %s", type(e).__name__)
            state = ReadyState(False, self._migrated, "the readiness check failed")
        with self._lock:
            self._last = (time.monotonic(), state)
        future.set_result(state)

    def _query(self) -> ReadyState:
        try:
            conn = psycopg2.connect(self._url, connect_timeout=int(CHECK_TIMEOUT),
                                    options=f"-c statement_timeout={int(CHECK_TIMEOUT * 1000)}")
        except psycopg2.Error:
            return ReadyState(False, self._migrated, "the database cannot be reached")
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                if self._migrated:
                    repository.ping(cur)
                    return ReadyState(True, True)
                applied = repository.applied_migrations(cur)
        except psycopg2.errors.UndefinedTable:
            applied = set()  # yoyo never ran on this database
        except psycopg2.Error as e:
            logger.info("readiness check failed: %s", type(e).__name__)
            return ReadyState(False, self._migrated, "the database cannot be queried")
        finally:
            conn.close()
        pending = [migration for migration in migration_ids() if migration not in applied]
        if pending:
            return ReadyState(True, False, f"migrations not applied: {', '.join(pending)}")
        self._migrated = True
        return ReadyState(True, True)
