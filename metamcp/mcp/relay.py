"""Requests an upstream makes of its client (sampling, elicitation, roots, ping), relayed to the
downstream client they belong to, and the client's answers routed back to the upstream.

A request on a call's stream goes to the client of that call. One outside any call (stdio and
legacy SSE name no call; SDK servers send roots/list on their standing stream) goes to the
newest call in flight on that upstream in this process, else to the newest GET stream here of
a session that sees the upstream. The client sees a gateway id
(`mm.<process>.<n>`), never the upstream's. It may POST its answer to any worker: the process
that relayed the request answers the upstream at once; another one stores the answer
(client_replies) and names it on the change bus. A client without the capability the request
needs, no stream to carry it, the call ending or the deadline passing: the upstream gets an
error, never a hang. A 2026-07-28 client takes no requests: it is asked through its call
(Channel.need_input), and a ping is answered here.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from metamcp import repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import jsonrpc, protocol
from metamcp.mcp.sessions import Session
from metamcp.mcp.upstream.interface import Respond, fallback_answer
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

#: The requests relayed, and the client capability each needs (None: any client answers).
NEEDS: dict[str, str | None] = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
    "ping": None,
}
ID_PREFIX = "mm."
#: A relayed request waits for its client this share of the upstream timeout, so the upstream
#: hears the refusal before the gateway would give up waiting on the upstream itself.
DEADLINE_SHARE = 0.9


class Channel(Protocol):
    """A way to a client: a call's stream, or a session's GET stream (metamcp.mcp.streams)."""

    @property
    def session(self) -> Session: ...

    def send(self, message: dict[str, Any]) -> bool:
        """Put `message` on the call's stream; False when it has none (any more)."""

    def need_input(self, message: dict[str, Any], respond: Respond) -> None:
        """Ask a 2026-07-28 client `message` the only way it can be asked: by ending its response
        with an `input_required` result (metamcp.mcp.mrtr); `respond` gets its answer."""


@dataclass
class _Waiting:
    session_id: str
    upstream_id: Any
    respond: Respond
    deadline: float
    channel: Channel


class Relay:
    """This process's relayed requests awaiting their client's answer."""

    def __init__(self, db: Database, upstream_timeout: float, origin: str) -> None:
        self._db = db
        self.deadline = upstream_timeout * DEADLINE_SHARE
        self._prefix = f"{ID_PREFIX}{origin}."
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._waiting: dict[str, _Waiting] = {}
        self._calls: dict[str, list[Channel]] = {}  # server -> its calls in flight, oldest first
        self._listeners: list[tuple[Channel, Collection[str] | None]] = []  # GET streams, oldest first
        self._sweeper: threading.Thread | None = None

    # --- calls in flight ----------------------------------------------------------------

    def opened(self, server: str, channel: Channel) -> None:
        with self._lock:
            self._calls.setdefault(server, []).append(channel)

    def closed(self, server: str, channel: Channel) -> None:
        """The call ended: what it still awaits from its client is refused to the upstream."""
        with self._lock:
            calls = self._calls.get(server, [])
            if channel in calls:
                calls.remove(channel)
            if not calls:
                self._calls.pop(server, None)
        self._orphaned(channel, "the call it belonged to ended")

    def listening(self, channel: Channel, servers: Collection[str] | None) -> None:
        """A session's GET stream opened; it sees `servers` (None: every server)."""
        with self._lock:
            self._listeners.append((channel, servers))

    def stopped_listening(self, channel: Channel) -> None:
        with self._lock:
            self._listeners = [entry for entry in self._listeners if entry[0] is not channel]
        self._orphaned(channel, "its stream closed")

    def _orphaned(self, channel: Channel, reason: str) -> None:
        with self._lock:
            keys = [key for key, waiting in self._waiting.items() if waiting.channel is channel]
        for key in keys:
            self._fail(key, reason)

    # --- upstream to client -------------------------------------------------------------

    def outside(self, server: str, message: dict[str, Any], respond: Respond) -> None:
        """A request an upstream made outside any call: to the newest call in flight on that
        upstream, else to the newest GET stream of a session that sees it (in this process)."""
        with self._lock:
            calls = self._calls.get(server)
            channel = calls[-1] if calls else next(
                (c for c, servers in reversed(self._listeners) if servers is None or server in servers), None)
        self.ask(channel, message, respond)

    def ask(self, channel: Channel | None, message: dict[str, Any], respond: Respond) -> None:
        """Relay one request of an upstream's to the client behind `channel`."""
        method = message.get("method")
        if channel is None or method not in NEEDS:
            respond(fallback_answer(message))
            return
        refusal = _refusal(channel.session, str(method), message.get("params"))
        if refusal is not None:
            respond(jsonrpc.error(message.get("id"), jsonrpc.METHOD_NOT_FOUND, refusal))
            return
        if channel.session.modern:
            if method == "ping":
                respond(jsonrpc.result(message.get("id"), {}))
            else:
                channel.need_input(message, respond)
            return
        key = f"{self._prefix}{next(self._ids)}"
        waiting = _Waiting(channel.session.id, message.get("id"), respond,
                           time.monotonic() + self.deadline, channel)
        with self._lock:
            self._waiting[key] = waiting
            self._lock.notify()
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True, name="metamcp-relay")
                self._sweeper.start()
        if not channel.send({**message, "id": key}):
            self.refuse(key)

    def refuse(self, key: str) -> None:
        """A request relayed to a call that turned out to have no stream to its client."""
        self._fail(key, "the call has no stream to the client to carry it")

    def withdrawn(self, channel: Channel, message: dict[str, Any]) -> dict[str, Any]:
        """The upstream's notifications/cancelled, for the client: a relayed request it withdrew
        is forgotten here and named by the id the client saw."""
        params = message.get("params")
        if not isinstance(params, dict):
            return message
        with self._lock:
            key = next((key for key, waiting in self._waiting.items()
                        if waiting.channel is channel and waiting.upstream_id == params.get("requestId")), None)
            if key is None:
                return message
            del self._waiting[key]
        return {**message, "params": {**params, "requestId": key}}

    # --- client to upstream -------------------------------------------------------------

    def answer(self, session: Session, message: dict[str, Any]) -> None:
        """A response the client POSTed: back to the upstream, from whichever process asked."""
        key = message.get("id")
        if not isinstance(key, str) or not key.startswith(ID_PREFIX):
            return  # not an answer to a relayed request: nothing waits for it
        if key.startswith(self._prefix):
            self._answered(key, session.id, message)
            return
        try:
            with self._db.transaction() as cur:  # the process that asked takes it from here
                repository.insert_client_reply(cur, key, session.id, message)
                repository.notify_change(cur, Topic.REPLY, id=key)
        except DatabaseUnavailable:
            logger.warning("a client's answer for another process was lost: the database is away")

    def on_reply(self, details: dict[str, Any]) -> None:
        """The change bus: a client's answer stored by another process."""
        key = details.get("id")
        if not isinstance(key, str) or not key.startswith(self._prefix):
            return
        # Off the listener's thread: answering may wait on the upstream.
        threading.Thread(target=self._collect, args=(key,), daemon=True).start()

    def _collect(self, key: str) -> None:
        try:
            with self._db.transaction() as cur:
                row = repository.take_client_reply(cur, key)
        except DatabaseUnavailable:
            return  # the request runs into its deadline
        if row is not None:
            self._answered(key, row["session_id"], row["message"])

    def _answered(self, key: str, session_id: str, message: dict[str, Any]) -> None:
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None or waiting.session_id != session_id:
                return  # expired, answered already, or another session's: dropped
            del self._waiting[key]
        waiting.respond(_reply(waiting.upstream_id, message))

    # --- deadlines ----------------------------------------------------------------------

    def _fail(self, key: str, reason: str, code: int = jsonrpc.INTERNAL_ERROR) -> None:
        with self._lock:
            waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting.respond(jsonrpc.error(waiting.upstream_id, code, f"The gateway's client did not answer: {reason}"))

    def _sweep(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                expired = [key for key, waiting in self._waiting.items() if waiting.deadline <= now]
                if not expired:
                    soonest = min((w.deadline for w in self._waiting.values()), default=now + 3600)
                    self._lock.wait(timeout=soonest - now)
                    continue
            for key in expired:
                self._fail(key, f"no answer within {self.deadline:g}s", protocol.REQUEST_TIMEOUT)


def _refusal(session: Session, method: str, params: Any) -> str | None:
    """Why the session's client cannot be asked `method`, or None."""
    need = NEEDS.get(method)
    if need is None:
        return None
    if need not in session.capabilities:
        return f"Method not found: the client did not declare the {need} capability"
    if (method == "elicitation/create" and isinstance(params, dict) and params.get("mode") == "url"
            and "elicitation.url" not in session.capabilities):
        return "Method not found: the client did not declare elicitation in URL mode"
    return None


def _reply(upstream_id: Any, message: dict[str, Any]) -> dict[str, Any]:
    """The client's response under the id the upstream gave its request."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        code = error.get("code")
        return jsonrpc.error(upstream_id, code if isinstance(code, int) else jsonrpc.INTERNAL_ERROR,
                             str(error.get("message", "error")), error.get("data"))
    result = message.get("result")
    return jsonrpc.result(upstream_id, result if isinstance(result, dict) else {})

