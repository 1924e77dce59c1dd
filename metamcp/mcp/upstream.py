"""Clients of upstream MCP servers: the interface the gateway uses, and what transports share.

One client per upstream server per process, shared by every downstream session and thread.
Each owns one requests.Session (a keep-alive pool sized for concurrency), initializes lazily
(once, under a lock) and sends only the credentials configured for its server. The
transports live in upstream_http.py (Streamable HTTP) and upstream_sse.py (HTTP+SSE); every
connection they open obeys the address policy (upstream_guard.py).

Timeouts: `connect_timeout` bounds opening a connection; `read_timeout` bounds the wait for
the *next piece of data*, not the whole call, so each progress notification (or SSE comment)
restarts a long call's clock. `timeout=` on a call overrides the read timeout for that call.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import ssl
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import requests
import urllib3.exceptions

from metamcp.addresses import AddressPolicy, AddressRefused
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.protocol import HANDSHAKE_VERSIONS, LATEST_VERSION
from metamcp.mcp.upstream_call import (
    TRANSPORT_ERRORS,
    Exchange,
    Inbox,
    OversizedReply,
    PendingCall,
    UpstreamError,
    UpstreamRpcError,
    UpstreamTimeout,
    is_response,
    result_of,
)
from metamcp.mcp.upstream_guard import GuardedAdapter
from metamcp.servers import ServerConfig

__all__ = [
    "TRANSPORT_ERRORS", "Exchange", "PendingCall", "Upstream", "UpstreamError", "UpstreamRpcError",
    "UpstreamTimeout", "create_upstream", "is_response", "is_session_wide", "result_of",
]

logger = logging.getLogger(__name__)

USER_AGENT = "metamcp"
MAX_PAGES = 100
#: Connections kept open per upstream and worker. Opened only on demand, so it is an upper
#: bound: each concurrent call holds one, and a smaller pool would close (and log) every
#: connection beyond it after use once many calls run at once.
POOL_SIZE = 1024
#: Read timeout of standing GET streams (they may be idle; a dead peer is noticed after this).
STREAM_IDLE_TIMEOUT = 300.0
#: Read timeout of best-effort messages (cancellations, replies to pings, DELETE).
QUIET_TIMEOUT = 2.0

Notify = Callable[[str, dict[str, Any]], None]


class Upstream:
    """What the gateway needs of any upstream; subclasses speak one transport."""

    def __init__(self, config: ServerConfig, *, connect_timeout: float, read_timeout: float,
                 on_notification: Notify | None = None, policy: AddressPolicy | None = None) -> None:
        if not config.url and config.transport != "stdio":
            raise UpstreamError(f"upstream {config.name!r}: no URL configured")
        #: The server's name in the registry (used in every message and log line).
        self.name = config.name
        self._url = config.url or ""
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._on_notification = on_notification
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._closed = threading.Event()
        self._info: dict[str, Any] | None = None
        self._init_failure: tuple[float, UpstreamError] | None = None
        #: Checked on every connection, after DNS resolution (the default: always-refused only).
        self._http = _new_session(config, policy or AddressPolicy())

    @property
    def server_info(self) -> dict[str, Any] | None:
        """The upstream's initialize result once initialized (capabilities, serverInfo, ...)."""
        return self._info

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> PendingCall:
        """Send a request; the returned PendingCall yields its notifications, then its response."""
        raise NotImplementedError

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def request(self, method: str, params: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> dict[str, Any]:
        """The result of one request; UpstreamRpcError for a JSON-RPC error answer."""
        call = self.call(method, params, timeout=timeout)
        try:
            for message in call:
                if is_response(message):
                    return result_of(message)
        finally:
            call.close()
        raise UpstreamError(f"upstream {self.name!r}: no response to {method}")

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

    def close(self) -> None:
        """Stop background threads and close every pooled connection. Idempotent."""
        self._closed.set()
        self._http.close()

    # --- for the transports -------------------------------------------------------------

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
        return {"protocolVersion": LATEST_VERSION, "capabilities": {},
                "clientInfo": {"name": "metamcp", "version": _version()}}

    def _accepted(self, message: dict[str, Any]) -> dict[str, Any]:
        """The initialize result in `message`, checked; UpstreamError if unusable."""
        try:
            result = result_of(message)
        except UpstreamRpcError as e:
            raise UpstreamError(f"upstream {self.name!r}: initialize refused ({e.code}: {e.message})") from e
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_VERSIONS:
            raise UpstreamError(f"upstream {self.name!r}: unsupported protocol version {version!r}")
        return result

    def _send(self, method: str, url: str, action: str, *, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None, timeout: tuple[float, float] | None = None,
              ) -> requests.Response:
        """One HTTP request (streamed, never redirected); transport errors become UpstreamError."""
        self._check_open()
        try:
            response = self._http.request(
                method, url, json=body, headers=headers, timeout=timeout or self._timeout(),
                stream=True, allow_redirects=False)
        except TRANSPORT_ERRORS as e:
            raise self._failure(e, action, sending=True) from e
        if 300 <= response.status_code < 400:
            response.close()  # following it could carry the configured credentials elsewhere
            raise UpstreamError(f"upstream {self.name!r}: redirected (HTTP {response.status_code}) "
                                f"while {action}; configure the final URL")
        return response

    def _parse(self, data: bytes | str, action: str) -> dict[str, Any]:
        try:
            return jsonrpc.validate(jsonrpc.parse_body(data.encode() if isinstance(data, str) else data)).raw
        except jsonrpc.RpcError as e:
            raise UpstreamError(f"upstream {self.name!r}: sent an invalid JSON-RPC message while {action}") from e

    def _failure(self, error: BaseException, action: str, *, sending: bool = False,
                 read_timeout: float | None = None) -> UpstreamError:
        """The UpstreamError for a transport exception: which server, what failed; no URL."""
        causes = _causes(error)
        where = f"upstream {self.name!r}"
        refused = next((c for c in causes if isinstance(c, AddressRefused)), None)
        if refused is not None:
            return UpstreamError(f"{where}: {refused} while {action}")
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return UpstreamError(f"{where}: connection refused while {action}")
        if any(isinstance(c, urllib3.exceptions.NameResolutionError) for c in causes):
            return UpstreamError(f"{where}: host name does not resolve while {action}")
        if any(isinstance(c, ssl.SSLError | requests.exceptions.SSLError) for c in causes):
            return UpstreamError(f"{where}: TLS failure while {action}")
        # (urllib3's NewConnectionError subclasses ConnectTimeoutError: a refusal is no timeout.)
        if any(isinstance(c, requests.ConnectTimeout) or (
                isinstance(c, urllib3.exceptions.ConnectTimeoutError)
                and not isinstance(c, urllib3.exceptions.NewConnectionError)) for c in causes):
            return UpstreamTimeout(f"{where}: connecting timed out while {action}")
        if any(isinstance(c, requests.ReadTimeout | urllib3.exceptions.ReadTimeoutError | TimeoutError)
               for c in causes):
            wait = self._read_timeout if read_timeout is None else read_timeout
            return UpstreamTimeout(f"{where}: no data for {wait:g}s while {action}")
        if isinstance(error, sse.SseError | OversizedReply):
            return UpstreamError(f"{where}: {error} while {action}")
        what = "cannot reach the server" if sending else "the connection broke"
        return UpstreamError(f"{where}: {what} while {action}")

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

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """Our reply to a request the upstream sent us: ping works, nothing else is offered."""
        if message.get("method") == "ping":
            return jsonrpc.result(message.get("id"), {})
        return jsonrpc.error(message.get("id"), jsonrpc.METHOD_NOT_FOUND,
                             f"Method not found: the gateway does not serve {message.get('method')}")


def is_session_wide(method: str) -> bool:
    """Notifications about the server as a whole, even when they arrive on a call's stream."""
    return method.endswith("/list_changed") or method == "notifications/resources/updated"


def _causes(error: BaseException) -> list[BaseException]:
    """The exception, what it wraps (args, urllib3 `reason`, __cause__, __context__)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [error]
    while todo and len(seen) < 20:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [c for c in (getattr(current, "reason", None), current.__cause__, current.__context__,
                             *current.args) if isinstance(c, BaseException)]
    return seen


def _new_session(config: ServerConfig, policy: AddressPolicy) -> requests.Session:
    http = requests.Session()
    # Nothing from the environment: no proxies, no .netrc credentials, only what is configured.
    http.trust_env = False
    adapter = GuardedAdapter(policy, pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    http.headers.clear()
    http.headers["User-Agent"] = USER_AGENT
    http.headers.update(config.headers)
    if config.bearer_token:
        http.headers["Authorization"] = f"Bearer {config.bearer_token}"
    return http


@functools.cache
def _version() -> str:
    try:
        return version("metamcp")
    except PackageNotFoundError:
        return "0.0.0"


def create_upstream(config: ServerConfig, **kwargs: Any) -> Upstream:
    """The client for `config`'s transport (kwargs: connect_timeout, read_timeout, ...)."""
    # The transports subclass Upstream, so they import this module: import them on use.
    if config.transport == "streamable_http":
        from metamcp.mcp.upstream_http import StreamableHttpUpstream

        return StreamableHttpUpstream(config, **kwargs)
    if config.transport == "sse":
        from metamcp.mcp.upstream_sse import LegacySseUpstream

        return LegacySseUpstream(config, **kwargs)
    if config.transport == "stdio":
        from metamcp.mcp.upstream_stdio import StdioUpstream

        return StdioUpstream(config, **kwargs)
    raise UpstreamError(f"upstream {config.name!r}: the {config.transport} transport is not supported")
