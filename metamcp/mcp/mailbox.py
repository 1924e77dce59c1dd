"""Session mailboxes: any JSON-RPC message delivered to the stream a downstream session holds
(its GET listener, or its legacy SSE stream), in whichever process holds it.

A stream held here gets the message straight in its queue. Otherwise the message is stored
(table sse_outbox) and NOTIFYed (topic "mailbox"); the process holding a stream of the session
takes it. A message no stream takes within MAILBOX_TTL seconds is dropped (stale ones are never
handed out, and are deleted at the session's next message, by the session purger, or with the
session).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import psycopg2.errors

from metamcp import repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

#: Seconds a stored message waits for a stream of its session.
MAILBOX_TTL = 60.0

#: A stream's queue; None wakes its reader (see Streams.standing).
Inbox = queue.SimpleQueue[dict[str, Any] | None]


class Mailbox:
    """This process's session streams, and delivery to a session's stream wherever it is held."""

    def __init__(self, db: Database, ttl: float = MAILBOX_TTL) -> None:
        self._db = db
        self.ttl = ttl
        #: The streams of each session held here, newest last (a message goes to the newest).
        self._streams: dict[str, list[Inbox]] = {}
        self._lock = threading.Lock()

    def open(self, session_id: str) -> Inbox:
        """A new stream of the session; messages stored for it meanwhile are on it at once."""
        inbox: Inbox = queue.SimpleQueue()
        with self._lock:
            self._streams.setdefault(session_id, []).append(inbox)
        self.collect(session_id)
        return inbox

    def close(self, session_id: str, inbox: Inbox) -> None:
        with self._lock:
            held = self._streams.get(session_id, [])
            if inbox in held:
                held.remove(inbox)
            if not held:
                self._streams.pop(session_id, None)

    def holds(self, session_id: str) -> bool:
        """Whether a stream of the session is held in this process."""
        return session_id in self._streams

    def deliver(self, session_id: str, message: dict[str, Any]) -> None:
        """Send `message` on a stream of the session, wherever it is held (a session gone: to
        nobody); raises DatabaseUnavailable when it must go through the database and that is away."""
        if self._put(session_id, message):
            return
        try:
            with self._db.transaction() as cur:
                repository.push_mailbox(cur, session_id, message, self.ttl)
                repository.notify_change(cur, Topic.MAILBOX, session=session_id)
        except psycopg2.errors.ForeignKeyViolation:
            logger.debug("a message for a session that ended was dropped")

    def on_notify(self, message: dict[str, Any]) -> None:
        """Messages were stored for a session (none named: the listener reconnected, maybe any)."""
        session_id = message.get("session")
        for target in list(self._streams) if session_id is None else [session_id]:
            if target in self._streams:
                self.collect(target)

    def collect(self, session_id: str) -> None:
        """Move the messages stored for the session onto its stream here, if it has one."""
        if session_id not in self._streams:
            return
        try:
            with self._db.transaction() as cur:
                messages = repository.take_mailbox(cur, session_id, self.ttl)
        except DatabaseUnavailable:
            return  # stored messages stay stored; the next collect, after the outage, takes them
        for message in messages:
            if not self._put(session_id, message):
                logger.debug("a stream closed while its messages were collected; dropped")

    def purge(self) -> int:
        """Drop the stored messages no stream took in time."""
        with self._db.transaction() as cur:
            return repository.purge_mailbox(cur, self.ttl)

    def _put(self, session_id: str, message: dict[str, Any]) -> bool:
        with self._lock:
            held = self._streams.get(session_id)
            if not held:
                return False
            held[-1].put(message)
        return True
