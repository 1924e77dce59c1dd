"""Legacy HTTP+SSE upstreams (MCP 2024-11-05): one GET stream carries every reply.

A reader thread holds `GET <url>`; its first `endpoint` event names where to POST (same
origin only). Replies come back as `message` events and are routed by id to the waiting
call; progress notifications by a progressToken rewritten to be unique per upstream. If the
stream dies, every waiting call fails and the next call connects (and initializes) afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.protocol import SSE_TYPE
from metamcp.mcp.upstream.call import (
    TRANSPORT_ERRORS,
    Exchange,
    Inbox,
    Inboxes,
    PendingCall,
    UpstreamError,
    UpstreamTimeout,
    is_response,
)
from metamcp.mcp.upstream.http import QUIET_TIMEOUT, STREAM_IDLE_TIMEOUT, HttpUpstream
from metamcp.mcp.upstream.interface import ClientMeta
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)


class _Connection(Inboxes):
    """One GET stream: where to POST, and the calls waiting for replies on it."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__()
        self.exchange = exchange
        self.endpoint: str | None = None
        self.failure: str | None = None
        self.ready = threading.Event()  # the endpoint is known, or the stream is gone
        self.initialized = False

    def fail_all(self) -> None:
        self.ready.set()
        super().fail_all()


class LegacySseUpstream(HttpUpstream):
    """An upstream speaking the 2024-11-05 HTTP+SSE transport."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._conn: _Connection | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None, client: ClientMeta | None = None) -> PendingCall:
        action = f"calling {method}"
        conn, request_id, inbox = self._post_retrying(method, params, timeout, action)

        def send_cancelled(reason: str | None) -> None:
            cancel: dict[str, Any] = {"requestId": request_id}
            if reason:
                cancel["reason"] = reason
            self._post_quietly(conn, jsonrpc.notification("notifications/cancelled", cancel))

        call = PendingCall(request_id, self._inbox_replies(inbox, timeout, action),
                           interrupt=lambda: inbox.put(None),
                           release=lambda _polite: conn.forget(request_id),
                           send_cancelled=send_cancelled, respond=lambda m: self._respond(conn, m))
        return self._calls.add(call)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        action = f"sending {method}"
        for attempt in (1, 2):
            conn = self._connected()
            status = self._post(conn, jsonrpc.notification(method, params), action)
            if status == 404 and attempt == 1:
                self._drop(conn)
                continue
            if status >= 400:
                raise UpstreamError(f"upstream {self.name!r}: HTTP {status} while {action}")
            return

    def close(self) -> None:
        self._closed.set()
        conn = self._conn
        if conn is not None:
            self._drop(conn)
        super().close()

    # --- connection ---------------------------------------------------------------------

    def _connected(self, timeout: float | None = None) -> _Connection:
        """The live, initialized stream, opening one first if needed (once at a time)."""
        conn = self._conn
        if conn is not None and conn.alive and conn.initialized:
            return conn
        arrived = time.monotonic()
        with self._init_lock:
            conn = self._conn
            if conn is not None and conn.alive and conn.initialized:
                return conn
            if conn is not None:
                self._drop(conn)
            self._failed_meanwhile(arrived)
            try:
                conn = self._open(timeout)
                try:
                    self._handshake(conn, timeout)
                except UpstreamError:
                    self._drop(conn)
                    raise
            except UpstreamError as e:
                self._init_failure = (time.monotonic(), e)
                raise
            self._conn = conn
            return conn

    def _open(self, timeout: float | None) -> _Connection:
        action = "opening the event stream"
        response = self._send("GET", self._url, action, headers={"Accept": SSE_TYPE},
                              timeout=self._timeout(max(STREAM_IDLE_TIMEOUT, self._read_timeout)))
        kind = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if response.status_code != 200 or kind != SSE_TYPE:
            response.close()
            raise UpstreamError(f"upstream {self.name!r}: HTTP {response.status_code} ({kind or 'no body'}) "
                                f"while {action}")
        conn = _Connection(Exchange(response))
        threading.Thread(target=self._read, args=(conn,), daemon=True,
                         name=f"metamcp-upstream-{self.name}").start()
        wait = self._timeout(timeout)[1]
        if not conn.ready.wait(wait):
            self._drop(conn)
            raise UpstreamTimeout(f"upstream {self.name!r}: no endpoint event within {wait:g}s while {action}")
        if conn.endpoint is None:
            self._drop(conn)
            raise UpstreamError(f"upstream {self.name!r}: {conn.failure or 'the stream ended'} while {action}")
        return conn

    def _handshake(self, conn: _Connection, timeout: float | None) -> None:
        action = "initializing"
        request_id = self._next_id()
        inbox, _ = conn.register(request_id, None)
        try:
            status = self._post(conn, jsonrpc.request(request_id, "initialize", self._initialize_params()),
                                action, timeout)
            if status >= 400:
                raise UpstreamError(f"upstream {self.name!r}: HTTP {status} while {action}")
            reply = next(m for m in self._inbox_replies(inbox, timeout, action) if is_response(m))
        finally:
            conn.forget(request_id)
        result = self._accepted(reply)
        action = "sending notifications/initialized"
        status = self._post(conn, jsonrpc.notification("notifications/initialized"), action, timeout)
        if status >= 400:
            raise UpstreamError(f"upstream {self.name!r}: HTTP {status} while {action}")
        conn.initialized = True
        self._info = result
        logger.info("upstream %s: initialized (protocol %s, legacy SSE)", self.name,
                    result["protocolVersion"])

    def _drop(self, conn: _Connection) -> None:
        conn.alive = False
        conn.exchange.interrupt()
        if self._conn is conn:
            self._conn = None

    def _read(self, conn: _Connection) -> None:
        """The reader thread: endpoint first, then route every message until the stream ends."""
        try:
            for event in sse.decode(conn.exchange.chunks()):
                if event.event == "endpoint" and conn.endpoint is None:
                    conn.endpoint = self._endpoint(event.data.strip())
                    if conn.endpoint is None:
                        conn.failure = "the endpoint event names another origin"
                        return
                    conn.ready.set()
                elif event.event == "message" and event.data:
                    self._dispatch(conn, event.data)
        except (*TRANSPORT_ERRORS, UpstreamError) as e:
            if conn.alive and not self._closed.is_set():
                logger.warning("upstream %s: event stream failed: %s", self.name,
                               self._failure(e, "reading the event stream", read_timeout=STREAM_IDLE_TIMEOUT)
                               if not isinstance(e, UpstreamError) else e)
        finally:
            if conn.alive and not self._closed.is_set():
                logger.info("upstream %s: event stream closed; the next call reconnects", self.name)
            conn.fail_all()
            conn.exchange.release()

    def _endpoint(self, data: str) -> str | None:
        """The POST URL an endpoint event names, if it is on the stream's origin."""
        endpoint = urljoin(self._url, data)
        if _origin(endpoint) != _origin(self._url):
            logger.warning("upstream %s: refusing an endpoint on another origin", self.name)
            return None
        return endpoint

    def _dispatch(self, conn: _Connection, data: str) -> None:
        try:
            message = self._parse(data, "reading the event stream")
        except UpstreamError as e:
            logger.warning("%s (skipped)", e)  # one bad message must not end the stream
            return
        if conn.route(message):
            return
        if "method" in message and "id" in message:  # the stream names no call
            self._ask_client(message, lambda m: self._respond(conn, m))
        elif "method" in message:
            self._deliver(message)

    # --- messages -----------------------------------------------------------------------

    def _post(self, conn: _Connection, message: dict[str, Any], action: str,
              read: float | None = None) -> int:
        """POST one message to the endpoint; its HTTP status (replies come on the stream)."""
        assert conn.endpoint is not None
        response = self._send("POST", conn.endpoint, action, body=message,
                              timeout=self._timeout(read))
        status = response.status_code
        Exchange(response).discard()
        return status

    def _respond(self, conn: _Connection, message: dict[str, Any]) -> None:
        """Answer a request of the upstream's off this thread (it may be the stream's reader)."""
        threading.Thread(target=self._post_quietly, args=(conn, message), daemon=True).start()

    def _post_quietly(self, conn: _Connection, message: dict[str, Any]) -> None:
        try:
            self._post(conn, message, f"sending {message.get('method', 'a reply')}", QUIET_TIMEOUT)
        except UpstreamError as e:
            logger.debug("upstream %s: %s", self.name, e)

    def _post_retrying(self, method: str, params: dict[str, Any] | None, timeout: float | None,
                       action: str) -> tuple[_Connection, int, Inbox]:
        """Send a request; a 404 (the upstream forgot the stream's session) reconnects once."""
        for attempt in (1, 2):
            conn = self._connected(timeout)
            request_id = self._next_id()
            inbox, sent = conn.register(request_id, params)
            try:
                status = self._post(conn, jsonrpc.request(request_id, method, sent), action)
            except UpstreamError:
                conn.forget(request_id)
                raise
            if status < 400:
                return conn, request_id, inbox
            conn.forget(request_id)
            if status != 404 or attempt == 2:
                raise UpstreamError(f"upstream {self.name!r}: HTTP {status} while {action}")
            logger.info("upstream %s: session expired; reconnecting", self.name)
            self._drop(conn)
        raise AssertionError("unreachable")


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, parts.port or default
