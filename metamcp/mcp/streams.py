"""SSE bodies of a worker: a streamed call, the standing streams (GET listener, 2026-07-28
subscriptions/listen, legacy SSE), and the thread budget and hang-up watch they live within.

No web framework here: the views wrap these bodies in their responses.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import jsonrpc, modern, mrtr, protocol, sse
from metamcp.mcp.capacity import HangupWatch, ThreadBudget
from metamcp.mcp.catalog import Catalog
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.mailbox import Mailbox
from metamcp.mcp.mrtr import Rounds
from metamcp.mcp.pool import client_error
from metamcp.mcp.relay import Relay
from metamcp.mcp.sessions import Session, SessionStore
from metamcp.mcp.subscriptions import MAX_PER_SESSION, UPDATED, Subscriptions
from metamcp.mcp.upstream.call import PendingCall, UpstreamError
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


class Streamed:
    """An upstream call whose messages go back to the client as they arrive; the upstream's
    requests of its client go through `relay`, which knows the call from its start (stdio and
    legacy SSE upstreams may ask before the call's first message comes back).

    A call may answer several client requests, one leg each (metamcp.mcp.mrtr): a 2026-07-28
    client is asked for input by ending its leg with `input_required`, the call is parked, and
    the client's retry resumes it in a new leg. A 2025 client is asked on the stream instead,
    also when a 2026-07-28 upstream answers `input_required` (the call is then retried
    upstream with the answers, `rounds`). `relay` None: a hand-over from another process.
    """

    def __init__(self, request_id: Any, session: Session, on_close: Callable[[], None], server: str,
                 relay: Relay | None, rounds: Rounds | None = None) -> None:
        self._call: PendingCall | None = None
        self._messages: Generator[dict[str, Any], None, None] | None = None  # the call's, once read
        self._server = server
        #: The id of the client's request the current leg answers.
        self.request_id = request_id
        self.session = session
        self._relay = relay
        self._rounds = rounds
        self._closers: list[Callable[[], None]] = [on_close]  # of the current leg
        self._lock = threading.RLock()
        self._put: Callable[[dict[str, Any] | None], None] | None = None  # the current leg's
        self._stream = False
        self._early: list[dict[str, Any]] | None = []  # relayed before the pump started
        self._reading = False  # a thread is reading the call
        self._held: list[dict[str, Any]] = []  # read while parked, for the next leg
        #: What a 2026-07-28 client is asked (key -> the upstream's request, and its answer's way).
        self._asked: dict[str, tuple[dict[str, Any], Respond]] = {}
        self._keys = itertools.count(1)
        self._parked: str | None = None  # the parking id while parked
        self._ended = False  # the upstream call is closed for good
        self._round = 0
        if relay is not None:
            relay.opened(server, self)

    @property
    def server(self) -> str:
        return self._server

    def attach(self, call: PendingCall) -> None:
        self._call = call

    def pump(self, put: Callable[[dict[str, Any] | None], None], stream: bool = True) -> None:
        """Forward notifications and requests, then the response with the client's id; None
        marks the end of the leg. Without a `stream` to the client, the upstream's requests are
        refused. When another thread is reading the call already (its leg parked while it
        waited on the upstream), that thread serves this leg."""
        assert self._call is not None
        with self._lock:
            early, self._early = self._early or [], None
            self._put, self._stream = put, stream
        for request in early:
            if stream:
                put(request)
            elif self._relay is not None:
                self._relay.refuse(request["id"])
        with self._lock:
            if self._ended:
                put(jsonrpc.error(self.request_id, protocol.UPSTREAM_ERROR, "The call has ended"))
                put(None)
                return
            if self._asked:  # asked before this leg, or not answered by the retry
                self._park_leg()
                return
            if self._reading:
                return
            self._reading = True
        try:
            self._read()
        finally:
            with self._lock:
                self._reading = False
                ended, messages = self._ended, self._messages
            if ended and messages is not None:
                messages.close()  # closed while we read: released here, by the reader

    def _read(self) -> None:
        try:
            while True:
                with self._lock:
                    message = self._held.pop(0) if self._held else None
                if message is None:
                    assert self._call is not None
                    if self._messages is None:
                        self._messages = cast(Generator[dict[str, Any], None, None], iter(self._call))
                    message = next(self._messages, None)
                if message is None:
                    message = _failure(protocol.UPSTREAM_ERROR, "The upstream closed the call without a response")
                if not self._take(message):
                    return
        except UpstreamError as e:
            logger.warning("%s", e.message)  # the detail, once; the client gets the generic text
            error = client_error(self._server, e)
            self._take(_failure(error.code, error.message))
        except RpcError as e:  # a retry refused by the pool
            self._take(_failure(e.code, e.message, e.data))
        except Exception:  # noqa: BLE001 - boundary: the client must get an answer, not a hang
            logger.exception("streaming a call failed")
            self._take(_failure(jsonrpc.INTERNAL_ERROR, "Internal error"))

    def _take(self, message: dict[str, Any]) -> bool:
        """Handle one message of the call; False when this leg's reading stops."""
        assert self._call is not None
        with self._lock:
            if self._put is None:  # parked: kept for the retry's leg
                self._held.append(message)
                return False
        if "method" not in message:
            return self._respond(message)
        if "id" in message:
            if self._relay is None:
                self._call.respond(fallback_answer(message))
            else:
                self._relay.ask(self, message, self._call.respond)
            with self._lock:
                return self._put is not None  # False: the leg ended asking for input
        if message["method"] == "notifications/cancelled" and self._relay is not None:
            message = self._relay.withdrawn(self, message)
        elif message["method"] == "notifications/message":
            level = (message.get("params") or {}).get("level", "info")
            if not self.session.wants_log(level):
                return True
        with self._lock:
            if self._put is None:
                self._held.append(message)
                return False
            self._put(message)
        return True

    def _respond(self, message: dict[str, Any]) -> bool:
        """The call's response: the leg's last message, unless a 2025 client is asked for the
        input a 2026-07-28 upstream needs and the call goes on (True)."""
        assert self._call is not None
        result = message.get("result")
        if self._call.modern and "error" not in message and mrtr.needs_input(result) and self._rounds is not None:
            assert isinstance(result, dict)
            if self.session.modern:
                message = {**message, "result": self._rounds.relabel(result)}
            else:
                try:
                    return self._ask_and_retry(result)
                except RpcError as e:
                    message = _failure(e.code, e.message, e.data)
        with self._lock:
            if self._put is None:
                self._held.append(message)
                return False
            if "error" in message:
                self._put({"jsonrpc": "2.0", "id": self.request_id, "error": message["error"]})
            else:
                self._put(jsonrpc.result(self.request_id, self._shaped(message.get("result") or {})))
            self._put(None)
            self._put = None
        return False

    def _shaped(self, result: dict[str, Any]) -> dict[str, Any]:
        return modern.complete(result) if self.session.modern else result

    # --- a 2025 client asked what a 2026-07-28 upstream needs -------------------------------

    def _ask_and_retry(self, result: dict[str, Any]) -> bool:
        """Ask the client each input request on the stream, then retry the upstream call with
        the answers (a new call, read from now on); RpcError ends the call."""
        assert self._rounds is not None and self._relay is not None and self._call is not None
        self._round += 1
        if not self._stream:
            raise mrtr.input_unavailable("tools/call")
        if self._round > mrtr.MAX_ROUNDS:
            raise RpcError(protocol.UPSTREAM_ERROR,
                           f"The upstream server asked for input more than {mrtr.MAX_ROUNDS} times")
        requests = result.get("inputRequests") or {}
        if not isinstance(requests, dict) or not all(isinstance(r, dict) for r in requests.values()):
            raise RpcError(protocol.UPSTREAM_ERROR, "The upstream server asked for input in a malformed result")
        answers: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        for key, request in requests.items():
            self._relay.ask(self, {"jsonrpc": "2.0", "id": key, "method": request.get("method"),
                                   "params": request.get("params") or {}}, answers.put)
        responses: dict[str, Any] = {}
        for _ in requests:
            try:
                answer = answers.get(timeout=self._relay.deadline + 5)
            except queue.Empty:
                raise RpcError(protocol.REQUEST_TIMEOUT, "The client did not answer the upstream's input requests") from None
            if "error" in answer:
                error = answer["error"]
                raise RpcError(error.get("code", jsonrpc.INTERNAL_ERROR), str(error.get("message", "error")))
            responses[str(answer["id"])] = answer.get("result") or {}
        if not requests:
            time.sleep(0.05)  # state only: the upstream asks to be retried, not at once in a loop
        state = result.get("requestState")
        retried = self._rounds.retry(responses, state if isinstance(state, str) else None)
        with self._lock:
            ended = self._ended
            if not ended:
                old, old_messages, self._call, self._messages = self._call, self._messages, retried, None
        if ended:  # the client left meanwhile
            retried.close()
            raise RpcError(protocol.UPSTREAM_ERROR, "The call has ended")
        old.close()  # answered: released politely (its connection is reused)
        if old_messages is not None:
            old_messages.close()
        return True

    # --- a 2026-07-28 client asked what a 2025 upstream requests ----------------------------

    def need_input(self, message: dict[str, Any], respond: Respond) -> None:
        """Relay.ask for a 2026-07-28 client: the request joins what its current (or next) leg
        ends with, as `input_required`."""
        with self._lock:
            if self._ended or self._rounds is None:
                respond(fallback_answer(message))
                return
            prefix = str(message.get("method", "input")).split("/")[0]
            self._asked[f"{prefix}-{next(self._keys)}"] = (message, respond)
            if self._put is not None and self._parked is None:
                self._park_leg()

    def _park_leg(self) -> None:
        """End the leg with `input_required` for everything asked; the call waits for the retry
        (under the lock)."""
        assert self._rounds is not None and self._put is not None
        self._parked, state = self._rounds.park()
        requests = {key: {"method": request.get("method"), "params": request.get("params") or {}}
                    for key, (request, _) in self._asked.items()}
        self._put(jsonrpc.result(self.request_id, self._shaped(
            {"resultType": "input_required", "inputRequests": requests, "requestState": state})))
        self._put(None)
        self._put = None

    def resume(self, request_id: Any, session: Session, responses: dict[str, Any],
               on_close: Callable[[], None]) -> None:
        """A retry took this parked call: its answers go to the upstream, and pump() serves the
        retry's leg."""
        with self._lock:
            self.request_id, self.session, self._parked = request_id, session, None
            self._closers.append(on_close)
            answered = [(self._asked.pop(key), responses[key]) for key in list(self._asked) if key in responses]
        for (request, respond), response in answered:
            respond(jsonrpc.result(request.get("id"), response))

    def expire(self, reason: str) -> None:
        """Parked too long: the upstream hears that its client did not answer, the call ends."""
        with self._lock:
            asked, self._asked = list(self._asked.values()), {}
            self._parked = None
        for request, respond in asked:
            respond(jsonrpc.error(request.get("id"), protocol.REQUEST_TIMEOUT,
                                  f"The gateway's client did not answer: {reason}"))
        self._end()

    # --- the 2025 relay, and the end of a leg --------------------------------------------

    def send(self, message: dict[str, Any]) -> bool:
        """Put a relayed request on the call's stream, from any thread; False when it has none."""
        with self._lock:
            if self._early is not None:
                self._early.append(message)
                return True
            if self._put is None or not self._stream:
                return False
            self._put(message)
            return True

    def drain(self) -> dict[str, Any]:
        """The final response of the leg only (for clients that take JSON, and for batches)."""
        messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        final: dict[str, Any] | None = None
        try:
            if self.session.modern:  # a request from outside the call may end the leg while
                # the reader waits on the upstream: the reader must not be this thread
                threading.Thread(target=self.pump, args=(messages.put, False), daemon=True,
                                 name="metamcp-leg").start()
            else:
                self.pump(messages.put, stream=False)
            while (message := messages.get()) is not None:
                if "method" not in message:
                    final = message
        finally:
            self.close()
        return final or jsonrpc.error(self.request_id, jsonrpc.INTERNAL_ERROR, "Internal error")

    def cancel(self, reason: str | None) -> None:
        if self._call is not None:
            self._call.cancel(reason)

    def close(self) -> None:
        """The leg's response closed: the call ends with it unless it is parked."""
        with self._lock:
            self._early = self._put = None
            closers, self._closers = self._closers, []
            parked = self._parked
        try:
            if parked is None or self._rounds is None or not self._rounds.mrtr.parking.hold(parked, self):
                self._end()
        finally:
            for closer in closers:
                closer()

    def on_close(self, closer: Callable[[], None]) -> None:
        """Also run `closer` when the leg closes (e.g. to end its admission)."""
        self._closers.append(closer)

    def _end(self) -> None:
        """Close the upstream call for good (once)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            call, reading, messages, asked = self._call, self._reading, self._messages, list(self._asked.values())
            self._asked = {}
        for request, respond in asked:
            respond(fallback_answer(request))
        try:
            if call is not None:
                call.close()
            if messages is not None and not reading:
                messages.close()  # suspended while parked: its end releases the call
        finally:
            if self._relay is not None:
                self._relay.closed(self._server, self)


def _failure(code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A gateway error in place of the upstream's response (the leg gives it the client's id)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": None, "error": error}


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
        #: Set when the worker begins a graceful shutdown: standing streams end.
        self.stopping = threading.Event()
        self._hangups = HangupWatch(self.stopping)
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

        # The pump runs on a pool thread, so this one can send keep-alives meanwhile.
        self._pumps.submit(outcome.pump, put)
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
        watched = self._hangups.watch(client, lambda: messages.put(None))
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
