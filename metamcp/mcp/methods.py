"""MCP methods of a downstream session: the dispatcher between the transport and the gateway."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.capacity import HangupWatch, ThreadBudget
from metamcp.mcp.gateway import Gateway, client_error
from metamcp.mcp.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, Message, RpcError
from metamcp.mcp.sessions import LOG_LEVELS, Session, SessionStore
from metamcp.mcp.upstream.call import PendingCall, UpstreamError
from metamcp.namespaces import NamespaceView

logger = logging.getLogger(__name__)

SERVER_NAME = "metamcp"
INSTRUCTIONS = (
    "MetaMCP gateway: the tools and prompts of several MCP servers, each named "
    "'<server>__<name>'; resources keep their URIs."
)
CANCEL_TOPIC = "cancel"
LIST_METHODS = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}


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
    """An upstream call whose messages go back to the client as they arrive."""

    def __init__(self, call: PendingCall, request_id: Any, session: Session,
                 on_close: Callable[[], None], pumps: ThreadPoolExecutor, server: str) -> None:
        self._call = call
        self._server = server
        self.request_id = request_id
        self._session = session
        self._on_close = on_close
        self._pumps = pumps
        self._closers: list[Callable[[], None]] = []

    def start_pump(self, put: Callable[[dict[str, Any] | None], None]) -> None:
        """Run pump() on a pool thread, so the response can send keep-alives meanwhile."""
        self._pumps.submit(self.pump, put)

    def pump(self, put: Callable[[dict[str, Any] | None], None]) -> None:
        """Forward notifications, then the response with the client's id; None marks the end."""
        try:
            for message in self._call:
                if "method" not in message:
                    put(self._response(message))
                    return
                if message["method"] == "notifications/message":
                    level = (message.get("params") or {}).get("level", "info")
                    if not self._session.wants_log(level):
                        continue
                put(message)
            put(jsonrpc.error(self.request_id, jsonrpc.UPSTREAM_ERROR,
                              "The upstream closed the call without a response"))
        except UpstreamError as e:
            logger.warning("%s", e.message)  # the detail, once; the client gets the generic text
            error = client_error(self._server, e)
            put(jsonrpc.error(self.request_id, error.code, error.message))
        except Exception:  # noqa: BLE001 - boundary: the client must get an answer, not a hang
            logger.exception("streaming a call failed")
            put(jsonrpc.error(self.request_id, jsonrpc.INTERNAL_ERROR, "Internal error"))
        finally:
            put(None)

    def drain(self) -> dict[str, Any]:
        """The final response only (for clients that take JSON, and for batches)."""
        final: list[dict[str, Any]] = []
        try:
            self.pump(lambda m: final.append(m) if m is not None and "method" not in m else None)
        finally:
            self.close()
        return final[-1]

    def cancel(self, reason: str | None) -> None:
        self._call.cancel(reason)

    def close(self) -> None:
        try:
            self._call.close()
        finally:
            self._on_close()
            for closer in self._closers:
                closer()

    def on_close(self, closer: Callable[[], None]) -> None:
        """Also run `closer` when the call closes (e.g. to end its admission)."""
        self._closers.append(closer)

    def _response(self, message: dict[str, Any]) -> dict[str, Any]:
        if "error" in message:
            return {"jsonrpc": "2.0", "id": self.request_id, "error": message["error"]}
        return jsonrpc.result(self.request_id, message.get("result") or {})


class Dispatcher:
    def __init__(self, gateway: Gateway, sessions: SessionStore, settings: Settings, version: str,
                 publish: Callable[[str, dict[str, Any]], None]) -> None:
        self._gateway = gateway
        self._sessions = sessions
        self._settings = settings
        self._version = version
        self._publish = publish
        self._inflight: dict[tuple[str, str], Streamed] = {}
        self._lock = threading.Lock()
        #: Long holders of this worker's threads (tool calls, standing streams), within a budget
        #: that leaves `reserved_threads` for short requests.
        self.budget = ThreadBudget(settings.threads, settings.reserved_threads)
        #: Set when the worker begins a graceful shutdown: standing streams end.
        self.stopping = threading.Event()
        self._hangups = HangupWatch(self.stopping)
        #: Readers of streamed calls: one per call in flight, so as many as request threads.
        self._pumps = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="metamcp-call")
        self._handlers: dict[str, Callable[[Session, Message, NamespaceView | None],
                                           dict[str, Any] | Streamed]] = {
            "ping": lambda _s, _m, _v: {},
            "tools/call": self._call_tool,
            "prompts/get": self._get_prompt,
            "resources/read": self._read_resource,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

    def initialize_result(self, version: str) -> dict[str, Any]:
        return {
            "protocolVersion": version,
            "capabilities": {
                "tools": {"listChanged": True},
                "prompts": {"listChanged": True},
                "resources": {"listChanged": True},
                "completions": {},
                "logging": {},
            },
            "serverInfo": {"name": SERVER_NAME, "title": "MetaMCP", "version": self._version},
            "instructions": INSTRUCTIONS,
        }

    def handle(self, session: Session, message: Message,
               view: NamespaceView | None = None) -> dict[str, Any] | Streamed:
        """Answer one request: a response dict, or a Streamed call. `view`: the namespace of
        an endpoint's session (None: every active server)."""
        method = message.method or ""
        try:
            if method in LIST_METHODS:
                cursor = message.params.get("cursor")
                page = self._gateway.list_page(LIST_METHODS[method], cursor, view)
                return jsonrpc.result(message.id, page)
            handler = self._handlers.get(method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
            outcome = handler(session, message, view)
            return outcome if isinstance(outcome, Streamed) else jsonrpc.result(message.id, outcome)
        except RpcError as e:  # ours, or the upstream's own answer (the gateway maps failures)
            return jsonrpc.error(message.id, e.code, e.message, e.data)

    def receive(self, session: Session, message: Message) -> None:
        """A notification (or a response) from the client."""
        if message.method != "notifications/cancelled":
            return
        request_id = message.params.get("requestId")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            return
        details = {"session": session.id, "request": request_id,
                   "reason": message.params.get("reason")}
        if not self.cancel(details):
            self._publish(CANCEL_TOPIC, details)  # the call may run in another worker

    def on_cancel(self, details: dict[str, Any]) -> None:
        """A cancellation published by another process."""
        self.cancel(details)

    def cancel(self, details: dict[str, Any]) -> bool:
        key = (str(details.get("session")), json.dumps(details.get("request")))
        streamed = self._inflight.get(key)
        if streamed is None:
            return False
        logger.info("cancelling a call at the client's request")
        streamed.cancel(details.get("reason"))
        return True

    def end_session(self, session: Session) -> None:
        self._sessions.delete(session.id)
        for key, streamed in list(self._inflight.items()):
            if key[0] == session.id:
                streamed.cancel("session ended")

    # --- methods -------------------------------------------------------------------------

    def _forward_params(self, message: Message, **params: Any) -> dict[str, Any]:
        meta = message.params.get("_meta")
        if isinstance(meta, dict):
            params["_meta"] = meta
        return params

    @staticmethod
    def _name_and_arguments(message: Message) -> tuple[str, dict[str, Any]]:
        name = message.params.get("name")
        arguments = message.params.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise RpcError(INVALID_PARAMS, "Invalid params: name must be a non-empty string")
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        return name, arguments

    def _call_tool(self, session: Session, message: Message, view: NamespaceView | None) -> Streamed:
        name, arguments = self._name_and_arguments(message)
        server, original = self._gateway.route("tools", name, view)
        params = self._forward_params(message, name=original, arguments=arguments)
        call = self._gateway.call(server, "tools/call", params)
        key = (session.id, json.dumps(message.id))

        def forget() -> None:
            with self._lock:
                self._inflight.pop(key, None)

        streamed = Streamed(call, message.id, session, forget, self._pumps, server)
        with self._lock:
            self._inflight[key] = streamed
        return streamed

    def _get_prompt(self, _session: Session, message: Message, view: NamespaceView | None) -> dict[str, Any]:
        name, arguments = self._name_and_arguments(message)
        server, original = self._gateway.route("prompts", name, view)
        params = self._forward_params(message, name=original, arguments=arguments)
        return self._gateway.request(server, "prompts/get", params)

    def _read_resource(self, _session: Session, message: Message, view: NamespaceView | None) -> dict[str, Any]:
        uri = message.params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise RpcError(INVALID_PARAMS, "Invalid params: uri must be a non-empty string")
        server = self._gateway.route_resource(uri, view)
        return self._gateway.request(server, "resources/read", self._forward_params(message, uri=uri))

    def _complete(self, _session: Session, message: Message, view: NamespaceView | None) -> dict[str, Any]:
        ref = message.params.get("ref")
        argument = message.params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: ref and argument must be objects")
        params = {k: v for k, v in message.params.items() if k != "ref"}
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            server, original = self._gateway.route("prompts", ref["name"], view)
            params["ref"] = {**ref, "name": original}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            server = self._gateway.route_resource(ref["uri"], view)
            params["ref"] = ref
        else:
            raise RpcError(INVALID_PARAMS, "Invalid params: ref must be a ref/prompt or ref/resource")
        return self._gateway.request(server, "completion/complete", params)

    def _set_level(self, session: Session, message: Message, _view: NamespaceView | None) -> dict[str, Any]:
        level = message.params.get("level")
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        self._sessions.set_log_level(session, level)
        return {}

    # --- the standing GET stream ---------------------------------------------------------

    def hold_stream(self) -> Callable[[], None]:
        """Take a place for a standing stream (GET listener or legacy SSE) in the thread budget;
        raises Saturated (503) when the worker has none left. Returns the release."""
        return self.budget.hold("stream")

    def standing_stream(self, first: bytes, messages: queue.SimpleQueue[dict[str, Any] | None], client: Any,
                        when_quiet: Callable[[], bool]) -> Iterator[bytes]:
        """SSE body of a standing stream: `first`, then each queued message as it comes, and a
        keep-alive comment after each quiet period (`when_quiet()` runs first; False ends the
        stream). It also ends when the client hangs up (`client`: its socket) or the worker
        stops: the hang-up watcher queues None to wake it, so an idle stream sleeps until its
        next keep-alive instead of polling."""
        keepalive = self._settings.keepalive_seconds
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
                yield sse.encode_event(json.dumps(message, separators=(",", ":")), event="message")
                quiet_since = time.monotonic()
        finally:
            self._hangups.unwatch(watched)

    def open_listener(self, session: Session, client: Any = None) -> StreamBody:
        """An SSE body of list_changed notifications and keep-alives; raises Saturated when the
        worker has no room. `client`: the connection's socket, watched so a departed client
        frees its thread."""
        release = self.hold_stream()
        messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

        def announce(method: str) -> None:
            messages.put(jsonrpc.notification(method))

        def session_alive() -> bool:
            try:
                return self._sessions.get(session.id) is not None  # ends when the session is deleted
            except DatabaseUnavailable:
                return True  # cannot tell while the database is away: keep the stream

        self._gateway.subscribe(announce)
        events = self.standing_stream(sse.comment("stream open"), messages, client, session_alive)

        def cleanup() -> None:
            self._gateway.unsubscribe(announce)
            release()

        return StreamBody(events, cleanup)
