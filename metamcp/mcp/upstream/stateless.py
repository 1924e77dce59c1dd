"""The 2026-07-28 half of Streamable HTTP upstreams: the server/discover probe, stateless
requests and the subscriptions/listen stream.

An upstream that answers `server/discover` listing 2026-07-28 (era.py) gets the requests of
2026 clients, and the gateway's own, statelessly: `_meta` (interface.Upstream._envelope) and
the standard headers (headers.py) on each POST, no session; input it needs comes back as an
`input_required` result, and closing a call's response cancels it. Its notifications come on a
`subscriptions/listen` stream whose filter names every list and the resources this process
watches. The probe's outcome is remembered until a failure says the upstream may have changed.
StreamableHttpUpstream (streamable.py) adds the 2025 sessions.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.headers import HeaderMap, header_map, request_headers
from metamcp.mcp.protocol import (
    ACCEPT_BOTH,
    HEADER_MISMATCH,
    JSON_TYPE,
    MISSING_CLIENT_CAPABILITY,
    MODERN_VERSION,
    SSE_TYPE,
    UNSUPPORTED_VERSION,
    VERSION_HEADER,
)
from metamcp.mcp.upstream import era as eras
from metamcp.mcp.upstream.call import (
    TRANSPORT_ERRORS,
    Exchange,
    PendingCall,
    UpstreamError,
    UpstreamTimeout,
    is_response,
)
from metamcp.mcp.upstream.era import Era
from metamcp.mcp.upstream.guard import watching
from metamcp.mcp.upstream.http import (
    DRAIN_SECONDS,
    LISTEN_BACKOFF_MAX,
    LISTEN_BACKOFF_MIN,
    STREAM_IDLE_TIMEOUT,
    HttpUpstream,
    content_type,
)
from metamcp.mcp.upstream.interface import ClientMeta
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)

#: Errors a 2026-07-28 server answers with (HTTP 400/404): the upstream is still modern.
MODERN_ERRORS = (jsonrpc.METHOD_NOT_FOUND, jsonrpc.INVALID_PARAMS, HEADER_MISMATCH,
                 MISSING_CLIENT_CAPABILITY)
LISTEN = "subscriptions/listen"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
#: The probe's id: a request of its own, so a session's ids start after it.
PROBE_ID = "metamcp-discover"


class StatelessHttpUpstream(HttpUpstream):
    """Streamable HTTP in 2026-07-28; subclasses read replies (_replies) and add 2025 sessions."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        #: The outcome of server/discover (None: not probed, or forgotten after a failure).
        self._era: Era | None = None
        #: Each tool's arguments mirrored in Mcp-Param-* headers, from the tools/list results seen.
        self._mirrored: dict[str, HeaderMap] = {}
        #: The thread holding the subscriptions/listen stream, and the stream it reads.
        self._subscriber: threading.Thread | None = None
        self._subscription: Exchange | None = None
        self._refiltering = threading.Event()
        #: Guards the streams notification readers hold (this one's and the subclass's).
        self._listen_lock = threading.Lock()

    @property
    def era(self) -> Era | None:
        """What the upstream speaks, once probed."""
        return self._era

    @abc.abstractmethod
    def _replies(self, exchange: Exchange, request_id: int | str, session: Any, timeout: float | None,
                 action: str) -> Iterator[dict[str, Any]]:
        """The messages of a POST's reply (JSON or SSE) until its response."""

    @abc.abstractmethod
    def _error_reply(self, exchange: Exchange, kind: str, request_id: int | str,
                     action: str) -> dict[str, Any] | None:
        """A JSON-RPC error carried by an HTTP error, else None."""

    def _probed(self, timeout: float | None) -> Era:
        """The upstream's era, probing server/discover first if not known (once, whatever the
        concurrency; a failure is shared by the threads that waited for it)."""
        era = self._era
        if era is not None:
            return era
        arrived = time.monotonic()
        with self._init_lock:
            if self._era is None:
                self._failed_meanwhile(arrived)
                try:
                    self._era = self._discover(timeout)
                except UpstreamError as e:
                    self._init_failure = (time.monotonic(), e)
                    raise
                if self._era.modern:
                    self._info = self._era.info
                    self._start_subscriber()
                logger.info("upstream %s: speaks %s", self.name, "2026-07-28" + (
                    " and 2025" if self._era.legacy else " only") if self._era.modern else "2025 only")
            return self._era

    def _discover(self, timeout: float | None) -> Era:
        """The era from the upstream's answer to server/discover. Only an upstream that cannot
        be reached (or does not answer in time) fails here; any other answer that is not a
        DiscoverResult means 2025, and initialize then tells what is wrong, if anything."""
        action = "initializing"  # what admins see: the probe is the first step of it
        request_id = PROBE_ID
        message = jsonrpc.request(request_id, eras.DISCOVER, self._envelope(None, None))
        read = min(self._timeout(timeout)[1], eras.PROBE_SECONDS)
        response = self._send("POST", self._url, action, body=message,
                              headers=self._modern_headers(eras.DISCOVER, None),
                              timeout=self._timeout(read), redirect_fails=False)
        exchange = Exchange(response)
        reply: dict[str, Any] | None = None
        try:
            status = response.status_code
            if 400 <= status < 500:
                reply = self._error_reply(exchange, content_type(response), request_id, action)
            elif status < 300:
                reply = next((m for m in self._replies(exchange, request_id, None, read, action)
                              if is_response(m)), None)
        except UpstreamTimeout:
            raise
        except UpstreamError as e:
            logger.debug("upstream %s: no usable answer to server/discover (%s)", self.name, e.message)
        except TRANSPORT_ERRORS as e:
            raise self._failure(e, action, read_timeout=read) from e
        finally:
            exchange.release(DRAIN_SECONDS)
        return eras.verdict(self.name, reply)

    def _forget(self, era: Era, why: str) -> None:
        """Probe again at the next request (the upstream may have been replaced)."""
        with self._init_lock:
            if self._era is era:
                self._era = None
                logger.info("upstream %s: %s; probing again at the next request", self.name, why)

    def _modern_headers(self, method: str, params: dict[str, Any] | None,
                        accept: str = ACCEPT_BOTH) -> dict[str, str]:
        mirrored = None
        if method == "tools/call" and isinstance((params or {}).get("name"), str):
            mirrored = self._mirrored.get((params or {})["name"])
        return {"Accept": accept, VERSION_HEADER: MODERN_VERSION,
                **request_headers(method, params, mirrored)}

    def _modern_call(self, era: Era, method: str, params: dict[str, Any] | None,
                     timeout: float | None, client: ClientMeta | None) -> PendingCall:
        """A stateless request: closing its response is its cancellation; the upstream cannot
        ask anything on it (input it needs comes back as an `input_required` result)."""
        request_id = self._next_id()
        params = self._envelope(params, client)
        exchange = Exchange()
        message = jsonrpc.request(request_id, method, params)
        messages = self._modern_exchange(era, exchange, message, timeout, f"calling {method}")

        def respond(answer: dict[str, Any]) -> None:
            logger.debug("upstream %s: a 2026-07-28 call asked its client; not answered", self.name)

        call = PendingCall(request_id, messages, interrupt=exchange.interrupt,
                           release=lambda polite: exchange.release(DRAIN_SECONDS if polite else 0.0),
                           send_cancelled=lambda _reason: None, respond=respond)
        call.modern = True
        return self._calls.add(call)

    def _modern_exchange(self, era: Era, exchange: Exchange, message: dict[str, Any],
                         timeout: float | None, action: str) -> Iterator[dict[str, Any]]:
        method, params = message["method"], message.get("params")
        try:
            for attempt in range(2):
                with watching(exchange.sending):  # closing the call must not wait for headers
                    response = self._send("POST", self._url, action, body=message,
                                          headers=self._modern_headers(method, params),
                                          timeout=self._timeout(timeout))
                status = response.status_code
                if not exchange.attach(response):
                    return
                for reply in self._replies(exchange, message["id"], None, timeout, action):
                    if is_response(reply):
                        self._judge(era, status, reply)
                        if attempt == 0 and self._mirrors_changed(status, reply, params, timeout):
                            break  # the tool's headers were unknown or stale: once more with them
                        if method == "tools/list":
                            reply = self._mirror(reply)
                    yield reply
                else:
                    return
        except UpstreamTimeout:
            raise  # slow, not gone
        except UpstreamError as e:
            if not exchange.aborted.is_set():
                self._forget(era, e.message)
            raise

    def _mirrors_changed(self, status: int, reply: dict[str, Any], params: dict[str, Any] | None,
                         timeout: float | None) -> bool:
        """After a tools/call refused for its Mcp-Param-* headers (HTTP 400, -32020): list the
        tools again (as the specification advises) and say whether the call's map changed."""
        error = reply.get("error")
        name = (params or {}).get("name")
        if status != 400 or not isinstance(error, dict) or error.get("code") != HEADER_MISMATCH \
                or not isinstance(name, str):
            return False
        before = self._mirrored.get(name)
        try:
            self.list_all("tools/list", "tools", timeout=timeout)
        except (UpstreamError, jsonrpc.RpcError):
            return False
        return self._mirrored.get(name) != before

    def _judge(self, era: Era, status: int, reply: dict[str, Any]) -> None:
        """Forget the era when an answer says the upstream no longer speaks 2026-07-28: -32022,
        or an HTTP 400/404 whose error is not one a 2026-07-28 server answers with."""
        error = reply.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if code == UNSUPPORTED_VERSION:
            self._forget(era, "it refused 2026-07-28 (-32022)")
        elif status in (400, 404) and code not in MODERN_ERRORS:
            self._forget(era, f"HTTP {status} with a 2025 error ({code})")

    def _mirror(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Remember each listed tool's x-mcp-header map; leave out tools whose annotations are
        invalid (as the specification has HTTP clients do)."""
        result = reply.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return reply
        kept = []
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                kept.append(tool)
                continue
            mirrored = header_map(tool.get("inputSchema"))
            if mirrored is None:
                logger.warning("upstream %s: tool %r left out: invalid x-mcp-header annotation",
                               self.name, tool["name"])
                continue
            if mirrored:
                self._mirrored[tool["name"]] = mirrored
            else:
                self._mirrored.pop(tool["name"], None)
            kept.append(tool)
        return reply if len(kept) == len(tools) else {**reply, "result": {**result, "tools": kept}}

    # --- 2026-07-28 notifications: the subscriptions/listen stream -------------------------

    def _listens_modern(self) -> bool:
        era = self._probed(None)
        return era.modern and self._on_notification is not None

    def _refilter(self) -> None:
        with self._listen_lock:
            subscription = self._subscription
        self._refiltering.set()
        if subscription is not None:
            subscription.interrupt()
        elif self._subscriber is None:
            self._start_subscriber()  # it had stopped (no listen offered): ask again

    def _start_subscriber(self) -> None:
        if self._on_notification is None or self._subscriber is not None:
            return
        self._subscriber = threading.Thread(target=self._subscribe_loop, daemon=True,
                                            name=f"metamcp-listen-{self.name}")
        self._subscriber.start()

    def _subscribe_loop(self) -> None:
        """Hold a subscriptions/listen stream while the upstream speaks 2026-07-28; reconnect
        with backoff, at once when the filter changed."""
        delay = LISTEN_BACKOFF_MIN
        while not self._closed.is_set():
            try:
                era = self._probed(None)
                if not era.modern:
                    break
                if not self._subscribe_once(era):
                    logger.debug("upstream %s: no subscriptions/listen offered", self.name)
                    break
                delay = LISTEN_BACKOFF_MIN
            except UpstreamError as e:
                if self._closed.is_set():
                    break
                logger.debug("upstream %s: subscriptions/listen: %s", self.name, e)
            if self._refiltering.is_set():
                continue
            if self._closed.wait(delay):
                break
            delay = min(delay * 2, LISTEN_BACKOFF_MAX)
        self._subscriber = None

    def _subscribe_once(self, era: Era) -> bool:
        """Hold one listen stream until it ends (or the filter changes); False if the upstream
        offers none."""
        action = "listening (subscriptions/listen)"
        self._refiltering.clear()
        notifications, generation = self._listen_filter()
        request_id = self._next_id()
        params = self._envelope({"notifications": notifications}, None)
        response = self._send("POST", self._url, action, body=jsonrpc.request(request_id, LISTEN, params),
                              headers=self._modern_headers(LISTEN, params),
                              timeout=self._timeout(STREAM_IDLE_TIMEOUT))
        exchange = Exchange(response)
        with self._listen_lock:
            self._subscription = exchange
        if self._closed.is_set() or self._refiltering.is_set():
            exchange.interrupt()
        try:
            status, kind = response.status_code, content_type(response)
            if status == 404 or (kind == JSON_TYPE and status < 300):
                reply = self._parse(exchange.read_all(), action) if status != 404 else {}
                error = reply.get("error")
                if status == 404 or (isinstance(error, dict) and error.get("code") == jsonrpc.METHOD_NOT_FOUND):
                    self._acknowledge({}, generation)  # nothing honoured: subscribe() says so
                    return False
                return True  # it ended the subscription at once: reconnect after the backoff
            if status != 200 or kind != SSE_TYPE:
                if status == 400:
                    self._forget(era, "HTTP 400 to subscriptions/listen")
                raise UpstreamError(f"HTTP {status}")
            for event in sse.decode(exchange.chunks()):
                if event.event != "message" or not event.data:
                    continue
                message = self._parse(event.data, action)
                if "method" not in message:
                    return True  # the upstream ended the subscription gracefully
                if message["method"] == ACKNOWLEDGED:
                    self._acknowledge(message, generation)
                elif "id" not in message:
                    self._deliver(message)
            return True
        except TRANSPORT_ERRORS as e:
            if self._refiltering.is_set():
                return True
            raise self._failure(e, action, read_timeout=STREAM_IDLE_TIMEOUT) from e
        finally:
            with self._listen_lock:
                self._subscription = None
            exchange.release()
