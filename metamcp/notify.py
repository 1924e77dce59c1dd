"""One change bus: topics, subscriptions, and delivery of each committed change to this
process and, through PostgreSQL LISTEN/NOTIFY, to every other.

A writer calls repository.notify_change() inside its transaction. When the transaction
commits, this process delivers the change to its subscribers at once (the writer sees its own
change) and PostgreSQL delivers it to every process's ChangeListener; a listener skips what its
own process published, so each change reaches each subscriber once. Nothing is delivered for a
transaction that rolls back.

When the listener's connection drops, caches keep what they have (they cannot be refilled while
the database is away); once it is back, every callback runs once with `{"topic": ..., "resync":
True}` (anything may have changed meanwhile). A callback that raises is logged; the thread
lives on.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import threading
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

import psycopg2
import psycopg2.extensions

from metamcp.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

#: Channel of the cross-process change messages.
NOTIFY_CHANNEL = "metamcp_changes"
#: application_name of a listener's connection, followed by a space and its process's origin:
#: tells which processes are alive (and how many listen).
LISTENER_NAME = "metamcp-listener"

Callback = Callable[[dict[str, Any]], None]
#: Reports the listener's connection state: None when connected, else the error.
Reporter = Callable[[BaseException | None], None]


class Topic(StrEnum):
    """What changed; each names the cached data its subscribers drop or refresh."""

    KEYS = "keys"  #: API keys, their roles and scopes
    SERVERS = "servers"  #: the server registry
    NAMESPACES = "namespaces"  #: namespaces, their servers and tool settings, endpoints
    SESSIONS = "sessions"  #: a downstream session changed or ended (and who confirmed an end)
    LISTS = "lists"  #: an upstream announced list_changed
    CANCEL = "cancel"  #: a client cancelled a call that may run in another worker
    MAILBOX = "mailbox"  #: messages were stored for a session's stream (metamcp.mcp.mailbox)
    REPLY = "reply"  #: a client's answer to a relayed request was stored for another process
    HANDOVER = "handover"  #: a retry's answers for the process holding its call, or that process's output


class ChangeBus:
    """The subscription table of one process, and delivery to it."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {}
        #: With the pid, tells this process's messages from others' (workers fork from one).
        self._token = secrets.token_hex(8)

    @property
    def origin(self) -> str:
        """Stamped on each NOTIFY so this process's listener skips its own changes."""
        return f"{self._token}.{os.getpid()}"

    def subscribe(self, topic: Topic, callback: Callback) -> None:
        self._callbacks.setdefault(topic.value, []).append(callback)

    def deliver(self, messages: Iterable[dict[str, Any]]) -> None:
        """Run the callbacks of each message's topic (a committed change of this process)."""
        for message in messages:
            for callback in self._callbacks.get(str(message.get("topic")), ()):
                _call(callback, message)

    def receive(self, payload: str) -> None:
        """A NOTIFY payload; another process's change is delivered, our own was already."""
        try:
            message = json.loads(payload)
            if not isinstance(message, dict) or not isinstance(message["topic"], str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring malformed change notification")
            return
        if message.pop("origin", None) != self.origin:
            self.deliver([message])

    def resync(self) -> None:
        """Run every callback once: changes may have been missed."""
        for topic, callbacks in self._callbacks.items():
            for callback in callbacks:
                _call(callback, {"topic": topic, "resync": True})


def _call(callback: Callback, message: dict[str, Any]) -> None:
    try:
        callback(message)
    except DatabaseUnavailable:
        pass  # the outage is logged once where it was noticed; the next resync catches up
    except Exception:  # noqa: BLE001 - boundary: one bad callback must not end the listener
        logger.exception("change callback %s failed on topic %s",
                         getattr(callback, "__qualname__", callback), message.get("topic"))


class ChangeListener:
    """The thread that hears other processes' changes and hands them to the bus."""

    def __init__(self, url: str, bus: ChangeBus, poll_seconds: float = 5.0,
                 report: Reporter | None = None) -> None:
        self._url = url
        self._bus = bus
        self._poll = poll_seconds
        #: Shares what the listener sees with the pool's outage state (one log line per outage).
        self._report = report
        self._stop = threading.Event()
        # stop() writes here to wake the thread out of select() at once.
        self._wake_read, self._wake_write = os.pipe()
        self._thread: threading.Thread | None = None
        #: Set once the first LISTEN is in place (tests wait on it).
        self.listening = threading.Event()

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
        conn = psycopg2.connect(self._url, connect_timeout=5,
                                application_name=f"{LISTENER_NAME} {self._bus.origin}")
        try:
            conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {NOTIFY_CHANNEL}")  # noqa: S608 - constant identifier
            if self._report is not None:
                self._report(None)
            # Whatever changed before LISTEN took effect (or while we were away) was not
            # announced to us: refresh once, now that the database can refill the caches.
            self._bus.resync()
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
                    self._bus.receive(conn.notifies.pop(0).payload)
        finally:
            conn.close()
