"""The Upstream interface: what the gateway uses of a client, whatever its transport.

One client per upstream server per process, shared by every downstream session and thread.
Each initializes lazily (once, under a lock) and speaks one transport: Streamable HTTP
(streamable.py) and legacy HTTP+SSE (legacy_sse.py) share the HTTP base (http.py); stdio
(stdio.py) runs a child process. factory.py picks the one a server's config names.

Eras: Streamable HTTP and stdio clients probe `server/discover` first (era.py) and speak
2026-07-28 to an upstream that lists it: per request on HTTP (a request made for a 2025 client
goes on a 2025 session when the upstream speaks both), for the child's life on stdio.
`PendingCall.modern` says which a call used; subscribe()/unsubscribe() hide how updates are
asked for (resources/subscribe, or the filter of a subscriptions/listen stream).

Timeouts: `connect_timeout` bounds opening a connection; `read_timeout` bounds the wait for
the *next piece of data*, not the whole call, so each progress notification (or SSE comment)
restarts a long call's clock. `timeout=` on a call overrides the read timeout for that call.
"""

from __future__ import annotations

import abc
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from metamcp.config import package_version
from metamcp.mcp import jsonrpc
from metamcp.mcp.protocol import (
    HANDSHAKE_VERSIONS,
    LATEST_VERSION,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_VERSION,
    MODERN_VERSION,
)
from metamcp.mcp.upstream.call import (
    CallSet,
    Inbox,
    PendingCall,
    UpstreamError,
    UpstreamTimeout,
    is_request,
    is_response,
    result_of,
)
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)

MAX_PAGES = 100

Notify = Callable[[str, dict[str, Any]], None]
#: Sends the upstream our response to one of its requests.
Respond = Callable[[dict[str, Any]], None]
#: Hears a request an upstream makes of its client outside any call: (server, request, respond).
AskClient = Callable[[str, dict[str, Any], Respond], None]
#: What the gateway offers upstreams as their client: it relays these requests to the
#: downstream client (metamcp.mcp.relay), which answers or refuses each by its own capabilities.
CLIENT_CAPABILITIES: dict[str, Any] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}


@dataclass(frozen=True)
class ClientMeta:
    """Who a request is made for, as far as the upstream may know: the downstream client's era
    (a dual-era upstream is spoken to in the era of the client that made the request), what it
    can be asked (a 2026-07-28 upstream gets it in `_meta`, so it asks only for what the client
    can answer) and the log level it asked for (None: none asked)."""

    modern: bool = False
    capabilities: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None


class Upstream(abc.ABC):
    """What the gateway needs of any upstream; subclasses speak one transport."""

    def __init__(self, config: ServerConfig, *, connect_timeout: float, read_timeout: float,
                 on_notification: Notify | None = None, on_request: AskClient | None = None) -> None:
        #: The server's name in the registry (used in every message and log line).
        self.name = config.name
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._on_notification = on_notification
        self._on_request = on_request
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._closed = threading.Event()
        self._info: dict[str, Any] | None = None
        self._init_failure: tuple[float, UpstreamError] | None = None
        #: Resource URIs this process hears updates of through `subscriptions/listen` (2026-07-28),
        #: and those of them the upstream's last acknowledgement honoured.
        self._watched: set[str] = set()
        self._acknowledged: frozenset[str] = frozenset()
        #: Changes of the watched set, and the last change an acknowledged stream included.
        self._filter_generation = self._acked_generation = 0
        self._watch = threading.Condition()
        #: Calls in flight: the transports add each PendingCall they make.
        self._calls = CallSet()

    @property
    def server_info(self) -> dict[str, Any] | None:
        """The upstream's initialize result once initialized (capabilities, serverInfo, ...)."""
        return self._info

    @abc.abstractmethod
    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None, client: ClientMeta | None = None) -> PendingCall:
        """Send a request; the returned PendingCall yields its notifications, then its response.
        `client`: whom it is for (None: the gateway itself, e.g. fetching lists)."""

    @abc.abstractmethod
    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any] | None:
        """Transport-specific state shown to admins (a stdio child's process), else None."""

    @abc.abstractmethod
    def stderr_lines(self) -> list[str]:
        """Recent stderr lines of the server's process ([] when this process runs none)."""

    def request(self, method: str, params: dict[str, Any] | None = None, *,
                timeout: float | None = None, client: ClientMeta | None = None) -> dict[str, Any]:
        """The result of one request; jsonrpc.RpcError for a JSON-RPC error answer. Requests
        the upstream makes meanwhile get the answers of a client that offers nothing."""
        call = self.call(method, params, timeout=timeout, client=client)
        try:
            for message in call:
                if is_response(message):
                    return result_of(message)
                if is_request(message):
                    call.respond(fallback_answer(message))
        finally:
            call.close()
        raise UpstreamError(f"upstream {self.name!r}: no response to {method}")

    def subscribe(self, uri: str) -> None:
        """Hear `notifications/resources/updated` for `uri` (through on_notification) from now on.

        2025 upstreams get `resources/subscribe` (RpcError: their refusal); on 2026-07-28 the URI
        joins the filter of the `subscriptions/listen` stream this client holds, which is
        reopened with it, and this returns once the upstream acknowledged it (RpcError when its
        acknowledgement leaves it out: it offers no resource subscriptions)."""
        if not self._listens_modern():
            self.request("resources/subscribe", {"uri": uri})
            return
        with self._watch:
            self._watched.add(uri)
            self._filter_generation += 1
            generation = self._filter_generation
        self._refilter()
        wait = self._connect_timeout + self._read_timeout
        with self._watch:
            if not self._watch.wait_for(lambda: self._acked_generation >= generation, timeout=wait):
                raise UpstreamTimeout(f"upstream {self.name!r}: no acknowledgement of the "
                                      f"subscription within {wait:g}s")
            if uri not in self._acknowledged:
                self._watched.discard(uri)
                raise jsonrpc.RpcError(jsonrpc.METHOD_NOT_FOUND,
                                       f"upstream {self.name!r} offers no resource subscriptions")

    def unsubscribe(self, uri: str) -> None:
        """Stop hearing updates of `uri` (2025: `resources/unsubscribe`; 2026-07-28: the listen
        filter, reopened without it; not waited for)."""
        if not self._listens_modern():
            self.request("resources/unsubscribe", {"uri": uri})
            return
        with self._watch:
            if uri not in self._watched:
                return
            self._watched.discard(uri)
            self._filter_generation += 1
        self._refilter()

    def list_all(self, method: str, key: str, *,
                 timeout: float | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list, following nextCursor (at most MAX_PAGES pages)."""
        items: list[dict[str, Any]] = []
        cursor: Any = None
        for _ in range(MAX_PAGES):
            result = self.request(method, {"cursor": cursor} if cursor else None, timeout=timeout)
            page = result.get(key)
            if not isinstance(page, list):
                raise UpstreamError(f"upstream {self.name!r}: the {method} result has no {key!r} list")
            items += [item for item in page if isinstance(item, dict)]
            if not result.get("nextCursor") or result["nextCursor"] == cursor:
                return items
            cursor = result["nextCursor"]
        logger.warning("upstream %s: %s stopped after %s pages", self.name, method, MAX_PAGES)
        return items

    @property
    def calls_in_flight(self) -> int:
        return len(self._calls)

    def abort_calls(self, failure: UpstreamError) -> None:
        """End every call in flight with `failure` (their readers are interrupted now), and every
        call made from now on (the process stops: see Pool.stop)."""
        self._calls.abort_all(failure)

    def close(self) -> None:
        """Stop background threads and release what the transport holds. Idempotent."""
        self._closed.set()

    # --- for the transports -------------------------------------------------------------

    def _listens_modern(self) -> bool:
        """Whether this client hears the upstream through `subscriptions/listen` (2026-07-28)."""
        return False

    def _refilter(self) -> None:
        """Reopen the listen stream with the current filter (transports that listen override)."""
        return None

    def _listen_filter(self) -> tuple[dict[str, Any], int]:
        """The `notifications` filter of a listen stream (every list, and the watched URIs), and
        the generation of the watched set it reflects."""
        with self._watch:
            uris, generation = sorted(self._watched), self._filter_generation
        return ({"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True,
                 "resourceSubscriptions": uris}, generation)

    def _acknowledge(self, message: dict[str, Any], generation: int) -> None:
        """Record what a `notifications/subscriptions/acknowledged` honoured of the filter of
        `generation`."""
        params = message.get("params")
        honoured = params.get("notifications") if isinstance(params, dict) else None
        uris = honoured.get("resourceSubscriptions") if isinstance(honoured, dict) else None
        with self._watch:
            self._acknowledged = frozenset(u for u in uris or () if isinstance(u, str))
            self._acked_generation = max(self._acked_generation, generation)
            self._watch.notify_all()

    def _envelope(self, params: dict[str, Any] | None, client: ClientMeta | None) -> dict[str, Any]:
        """`params` with the 2026-07-28 `_meta` of a request made for `client` (None: the gateway
        itself, offering what it offers upstreams)."""
        params = dict(params or {})
        meta = params.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta[META_VERSION] = MODERN_VERSION
        meta[META_CAPABILITIES] = client.capabilities if client is not None else CLIENT_CAPABILITIES
        meta[META_CLIENT_INFO] = self._client_info()
        meta.pop(META_LOG_LEVEL, None)
        if client is not None and client.log_level:
            meta[META_LOG_LEVEL] = client.log_level
        params["_meta"] = meta
        return params

    def _client_info(self) -> dict[str, Any]:
        return {"name": "metamcp", "version": package_version()}

    def _next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def _timeout(self, read: float | None = None) -> tuple[float, float]:
        return (self._connect_timeout, self._read_timeout if read is None else read)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise UpstreamError(f"upstream {self.name!r}: the client is closed")

    def _failed_meanwhile(self, arrived: float) -> None:
        """Raise the failure of an initialization that ran while we waited for the lock.

        Threads queued behind a failing handshake share its outcome instead of each trying
        again in turn (against a hung upstream, that would cost each a whole timeout).
        """
        failure = self._init_failure
        if failure is not None and failure[0] >= arrived:
            raise type(failure[1])(failure[1].message)

    def _initialize_params(self) -> dict[str, Any]:
        return {"protocolVersion": LATEST_VERSION, "capabilities": CLIENT_CAPABILITIES,
                "clientInfo": self._client_info()}

    def _accepted(self, message: dict[str, Any]) -> dict[str, Any]:
        """The initialize result in `message`, checked; UpstreamError if unusable."""
        try:
            result = result_of(message)
        except jsonrpc.RpcError as e:
            raise UpstreamError(f"upstream {self.name!r}: initialize refused ({e.code}: {e.message})") from e
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_VERSIONS:
            raise UpstreamError(f"upstream {self.name!r}: unsupported protocol version {version!r}")
        return result

    def _inbox_replies(self, inbox: Inbox, timeout: float | None, action: str,
                 channel: str = "the event stream") -> Iterator[dict[str, Any]]:
        """A call's messages from its inbox until its response; the read timeout restarts
        with each one."""
        wait = self._timeout(timeout)[1]
        while True:
            try:
                message = inbox.get(timeout=wait)
            except queue.Empty:
                raise UpstreamTimeout(f"upstream {self.name!r}: no data for {wait:g}s while {action}") from None
            if message is None:
                raise UpstreamError(f"upstream {self.name!r}: {channel} closed while {action}")
            yield message
            if is_response(message):
                return

    def _deliver(self, message: dict[str, Any]) -> None:
        """A notification not tied to a call: to on_notification, if any."""
        if self._on_notification is None:
            return
        try:
            self._on_notification(self.name, message)
        except Exception:  # noqa: BLE001 - boundary: the gateway's callback must not kill a reader
            logger.exception("upstream %s: on_notification failed", self.name)

    def _ask_client(self, message: dict[str, Any], respond: Respond) -> None:
        """A request the upstream made outside any call: to on_request, else answered here."""
        if self._on_request is None:
            respond(fallback_answer(message))
            return
        try:
            self._on_request(self.name, message, respond)
        except Exception:  # noqa: BLE001 - boundary: the gateway's callback must not kill a reader
            logger.exception("upstream %s: on_request failed", self.name)
            respond(jsonrpc.error(message.get("id"), jsonrpc.INTERNAL_ERROR, "Internal error"))


def fallback_answer(message: dict[str, Any]) -> dict[str, Any]:
    """The reply to an upstream's request that no client can take: ping works, the rest is refused."""
    if message.get("method") == "ping":
        return jsonrpc.result(message.get("id"), {})
    return jsonrpc.error(message.get("id"), jsonrpc.METHOD_NOT_FOUND,
                         f"Method not found: no client of the gateway can answer {message.get('method')} now")
