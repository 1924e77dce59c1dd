"""Cross-process cache invalidation over PostgreSQL LISTEN/NOTIFY.

Each process runs one ChangeListener thread on its own connection. Writers call
repository.notify_change() inside their transaction; PostgreSQL delivers the message to every
listener after commit, and the listener runs the callbacks registered for its topic.

When the connection drops, caches keep what they have (they cannot be refilled while the
database is away); once it is back, every callback runs once with `{"topic": ..., "resync":
True}` (anything may have changed meanwhile). A callback that raises is logged; the thread
lives on.
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

from metamcp.db import NOTIFY_CHANNEL
from metamcp.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

Callback = Callable[[dict], None]
#: Reports the listener's connection state: None when connected, else the error.
Reporter = Callable[[BaseException | None], None]


class ChangeListener:
    def __init__(self, url: str, poll_seconds: float = 5.0, report: Reporter | None = None) -> None:
        self._url = url
        self._poll = poll_seconds
        #: Shares what the listener sees with the pool's outage state (one log line per outage).
        self._report = report
        self._callbacks: dict[str, list[Callback]] = {}
        self._stop = threading.Event()
        # stop() writes here to wake the thread out of select() at once.
        self._wake_read, self._wake_write = os.pipe()
        self._thread: threading.Thread | None = None
        #: Set once the first LISTEN is in place (tests wait on it).
        self.listening = threading.Event()

    def subscribe(self, topic: str, callback: Callback) -> None:
        self._callbacks.setdefault(topic, []).append(callback)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metamcp-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout=self._poll + 1)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            topic = message["topic"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring malformed change notification")
            return
        for callback in self._callbacks.get(topic, []):
            self._call(callback, message)

    def _dispatch_all(self) -> None:
        for topic, callbacks in self._callbacks.items():
            for callback in callbacks:
                self._call(callback, {"topic": topic, "resync": True})

    @staticmethod
    def _call(callback: Callback, message: dict) -> None:
        try:
            callback(message)
        except DatabaseUnavailable:
            pass  # the outage is logged once where it was noticed; the next resync catches up
        except Exception:  # noqa: BLE001 - boundary: one bad callback must not end the listener
            logger.exception("change callback %s failed on topic %s",
                             getattr(callback, "__qualname__", callback), message.get("topic"))

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except (psycopg2.Error, OSError) as e:
                self.listening.clear()
                if self._report is not None:
                    self._report(e)
                else:
                    logger.warning("change listener lost its connection (%s); retrying", type(e).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _listen(self) -> None:
        conn = psycopg2.connect(self._url, connect_timeout=5)
        try:
            conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {NOTIFY_CHANNEL}")  # noqa: S608 - constant identifier
            if self._report is not None:
                self._report(None)
            # Whatever changed before LISTEN took effect (or while we were away) was not
            # announced to us: refresh once, now that the database can refill the caches.
            self._dispatch_all()
            self.listening.set()
            while not self._stop.is_set():
                ready, _, _ = select.select([conn.fileno(), self._wake_read], [], [], self._poll)
                if self._wake_read in ready:
                    break
                if not ready:
                    # Idle: prove the connection is alive, so a dead one is noticed.
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                conn.poll()
                while conn.notifies:
                    self._dispatch(conn.notifies.pop(0).payload)
        finally:
            conn.close()
