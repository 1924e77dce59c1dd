"""SSE bodies of a worker: a streamed call, the standing streams (GET listener, 2026-07-28
subscriptions/listen, legacy SSE), and the thread budget and hang-up watch they live within.

No web framework here: the views wrap these bodies in their responses.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import jsonrpc, protocol, sse
from metamcp.mcp.capacity import HangupWatch, ThreadBudget
from metamcp.mcp.catalog import Catalog
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.mailbox import Mailbox
from metamcp.mcp.relay import Relay
from metamcp.mcp.sessions import Session, SessionStore
from metamcp.mcp.streamed import Streamed
from metamcp.mcp.subscriptions import MAX_PER_SESSION, UPDATED, Subscriptions
from metamcp.mcp.upstream.call import UpstreamError
from metamcp.mcp.upstream.interface import Respond, fallback_answer
from metamcp.namespaces import NamespaceView

logger = logging.getLogger(__name__)

#: subscriptions/listen's filter: its list_changed flags and the capability each stands for.
LIST_FLAGS = {"toolsListChanged": "tools", "promptsListChanged": "prompts", "resourcesListChanged": "resources"}
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"


class StreamBody:
    """A WSGI body that runs `cleanup` once when the server closes it, even if never iterated."""

    def __init__(self, chunks: Iterator[bytes], cleanup: Callable[[], None]) -> None:
        self._chunks = chunks
        self._cleanup: Callable[[], None] | None = cleanup

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()


class _Listener:
    """A session's GET stream as the relay sees it."""

    def __init__(self, session: Session, messages: queue.SimpleQueue[dict[str, Any] | None]) -> None:
        self.session = session
        self._messages = messages

    def send(self, message: dict[str, Any]) -> bool:
        self._messages.put(message)
        return True

    def need_input(self, message: dict[str, Any], respond: Respond) -> None:
        respond(fallback_answer(message))  # a session's GET stream serves 2025 clients only


def _event(message: dict[str, Any]) -> bytes:
    return sse.encode_event(json.dumps(message, separators=(",", ":")), event="message")


class Streams:
    """This worker's long-lived SSE bodies and the threads they hold."""

    def __init__(self, settings: Settings, sessions: SessionStore, catalog: Catalog, relay: Relay,
                 mailbox: Mailbox, subscriptions: Subscriptions | None = None) -> None:
        self._sessions = sessions
        #: Where a 2026-07-28 subscription listens to resource updates (None: it cannot).
        self._subscriptions = subscriptions
        self._catalog = catalog
        self._relay = relay
        #: Where messages for a session's GET stream arrive, from any process.
        self._mailbox = mailbox
        self._keepalive = settings.keepalive_seconds
        #: Long holders of this worker's threads (tool calls, standing streams), within a budget
        #: that leaves `reserved_threads` for short requests.
        self.budget = ThreadBudget(settings.threads, settings.reserved_threads)
        #: Set when the worker begins a graceful shutdown (stop()): standing streams end.
        self.stopping = threading.Event()
        self._hangups = HangupWatch(self.stopping)
        #: How to wake each standing stream now open (stop() wakes them all at once).
        self._wakers: set[Callable[[], None]] = set()
        self._wakers_lock = threading.Lock()
        #: Readers of streamed calls: one per call in flight, so as many as request threads.
        self._pumps = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="metamcp-call")

    def call_body(self, outcome: Streamed) -> StreamBody:
        """SSE body of a streamed call: its messages in order, keep-alives while it is silent.

        The body's close() closes the upstream call when the client leaves early.
        """
        def events() -> Iterator[bytes]:  # the pump starts when the body is first read
            yield from self._call_events(self._pump(outcome))

        return StreamBody(events(), outcome.close)

    def call_reply(self, outcome: Streamed) -> dict[str, Any] | StreamBody:
        """A 2026-07-28 call's answer: its response alone when it comes before any other message
        and within a keep-alive period (so an error is answered as JSON with its HTTP status;
        the caller closes the call once that answer is sent), else the SSE body of the call from
        its first message on."""
        messages = self._pump(outcome)
        try:
            first = messages.get(timeout=self._keepalive)
        except queue.Empty:
            first = None
        if first is not None and "method" not in first:
            return first
        return StreamBody(self._call_events(messages, first), outcome.close)

    def _pump(self, outcome: Streamed) -> queue.SimpleQueue[dict[str, Any] | None]:
        messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

        def put(message: dict[str, Any] | None) -> None:
            if message is not None and str(message.get("method", "")).endswith("/list_changed"):
                # Said during a call, it is still news of the upstream's lists: the catalog
                # refreshes them and tells every listener, as when heard outside a call.
                self._catalog.on_notification(outcome.server, message)
            messages.put(message)

        # The pump runs on a pool thread, so this one can send keep-alives meanwhile; in this
        # thread's context, so what it logs carries the request's id (metamcp.logs).
        self._pumps.submit(contextvars.copy_context().run, outcome.pump, put)
        return messages

    def _call_events(self, messages: queue.SimpleQueue[dict[str, Any] | None],
                     first: dict[str, Any] | None = None) -> Iterator[bytes]:
        if first is not None:
            yield _event(first)
        while True:
            try:
                message = messages.get(timeout=self._keepalive)
            except queue.Empty:
                yield sse.comment()
                continue
            if message is None:
                return
            yield _event(message)

    def stop(self) -> None:
        """The worker stops: every standing stream ends now (a subscriptions/listen stream with
        its request's result), and any opened later ends after its first event."""
        self.stopping.set()
        with self._wakers_lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def hold(self) -> Callable[[], None]:
        """Take a place for a standing stream (GET listener or legacy SSE) in the thread budget;
        raises Saturated (503) when the worker has none left. Returns the release."""
        return self.budget.hold("stream")

    def standing(self, first: bytes, messages: queue.SimpleQueue[dict[str, Any] | None], client: Any,
                 when_quiet: Callable[[], bool]) -> Iterator[bytes]:
        """SSE body of a standing stream: `first`, then each queued message as it comes, and a
        keep-alive comment after each quiet period (`when_quiet()` runs first; False ends the
        stream). It also ends when the client hangs up (`client`: its socket) or the worker
        stops: the hang-up watcher queues None to wake it, so an idle stream sleeps until its
        next keep-alive instead of polling."""
        keepalive = self._keepalive

        def wake() -> None:
            messages.put(None)

        watched = self._hangups.watch(client, wake)
        with self._wakers_lock:
            self._wakers.add(wake)
        try:
            yield first
            quiet_since = time.monotonic()
            while not self.stopping.is_set():
                try:
                    message = messages.get(timeout=max(0.0, quiet_since + keepalive - time.monotonic()))
                except queue.Empty:
                    if not when_quiet():
                        return
                    yield sse.comment()
                    quiet_since = time.monotonic()
                    continue
                if message is None:  # woken: the client may have left, or the worker stops
                    if sse.peer_closed(client):
                        return
                    continue
                yield _event(message)
                quiet_since = time.monotonic()
        finally:
            self._hangups.unwatch(watched)
            with self._wakers_lock:
                self._wakers.discard(wake)

    def open_listener(self, session: Session, client: Any = None,
                      servers: Collection[str] | None = None) -> StreamBody:
        """An SSE body of list_changed notifications, requests of the upstreams the session
        sees (`servers`, None: all) made outside any call, the session's mailbox (resource
        updates, from any process) and keep-alives; raises Saturated when the worker has no
        room. `client`: the connection's socket, watched so a departed client frees its thread."""
        release = self.hold()
        messages = self._mailbox.open(session.id)
        channel = _Listener(session, messages)

        def announce(method: str) -> None:
            messages.put(jsonrpc.notification(method))

        def session_alive() -> bool:
            try:
                return self._sessions.get(session.id) is not None  # ends when the session is deleted
            except DatabaseUnavailable:
                return True  # cannot tell while the database is away: keep the stream

        self._catalog.subscribe(announce)
        self._relay.listening(channel, servers)
        events = self.standing(sse.comment("stream open"), messages, client, session_alive)

        def cleanup() -> None:
            self._catalog.unsubscribe(announce)
            self._relay.stopped_listening(channel)
            self._mailbox.close(session.id, messages)
            release()

        return StreamBody(events, cleanup)

    def open_subscription(self, request_id: Any, wanted: Any, view: NamespaceView | None,
                          client: Any = None) -> StreamBody:
        """The SSE body of a 2026-07-28 `subscriptions/listen` (`wanted`: its `notifications`
        filter): the acknowledgement with the filter honoured, then the list_changed the
        client opted into (from the catalog's announcements, as the GET listener gets them)
        and the updates of the URIs it listed (this process subscribes upstream, no rows),
        each tagged with the subscription id (the request's), and keep-alives. When the worker
        stops, a final result ends it. RpcError for a malformed filter (before anything is
        held); Saturated when the worker has no room. URIs of no resource the view sees, or
        whose server refuses, are left out of the acknowledgement."""
        flags, uris = _subscription_filter(wanted)
        release = self.hold()
        messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        tag = {protocol.META_SUBSCRIPTION: request_id}
        capabilities = {LIST_FLAGS[flag] for flag in flags}

        def announce(method: str) -> None:
            if method.split("/")[1] in capabilities:
                messages.put(jsonrpc.notification(method, {"_meta": tag}))

        def updated(params: dict[str, Any]) -> None:
            messages.put(jsonrpc.notification(UPDATED, {**params, "_meta": tag}))

        releases: list[Callable[[], None]] = []
        honoured: list[str] = []
        try:
            for uri in uris if self._subscriptions is not None else []:
                try:
                    releases.append(self._subscriptions.listen(uri, view, updated))  # type: ignore[union-attr]
                    honoured.append(uri)
                except (RpcError, UpstreamError) as e:
                    logger.info("subscriptions/listen: not watching a resource (%s)", type(e).__name__)
        except BaseException:
            for undo in releases:
                undo()
            release()
            raise
        self._catalog.subscribe(announce)
        acknowledged: dict[str, Any] = {flag: True for flag in flags}
        if uris:
            acknowledged["resourceSubscriptions"] = honoured
        first = _event(jsonrpc.notification(ACKNOWLEDGED, {"_meta": tag, "notifications": acknowledged}))

        def events() -> Iterator[bytes]:
            yield from self.standing(first, messages, client, lambda: True)
            if self.stopping.is_set():  # a graceful end: the listen request's result
                yield _event(jsonrpc.result(request_id, {"resultType": "complete", "_meta": tag}))

        def cleanup() -> None:
            self._catalog.unsubscribe(announce)
            for undo in releases:
                undo()
            release()

        return StreamBody(events(), cleanup)


def _subscription_filter(wanted: Any) -> tuple[list[str], list[str]]:
    """The list_changed flags set in a listen filter, and its URIs (at most MAX_PER_SESSION,
    each once); RpcError -32602 when the filter is not the revision's shape."""
    if wanted is None:
        return [], []
    if not isinstance(wanted, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: notifications must be an object")
    flags = []
    for flag in LIST_FLAGS:
        value = wanted.get(flag, False)
        if not isinstance(value, bool):
            raise RpcError(INVALID_PARAMS, f"Invalid params: notifications.{flag} must be a boolean")
        if value:
            flags.append(flag)
    uris = wanted.get("resourceSubscriptions", [])
    if not isinstance(uris, list) or not all(isinstance(uri, str) and uri for uri in uris):
        raise RpcError(INVALID_PARAMS, "Invalid params: notifications.resourceSubscriptions must be a list of URIs")
    if len(uris) > MAX_PER_SESSION:
        raise RpcError(INVALID_PARAMS, f"Invalid params: at most {MAX_PER_SESSION} resourceSubscriptions")
    return flags, list(dict.fromkeys(uris))
