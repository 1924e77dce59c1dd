"""The HTTP base of Streamable HTTP and legacy SSE clients: one requests.Session, one boundary.

Each client owns one requests.Session (a keep-alive pool sized for concurrency) and sends only
the credentials configured for its server. Every request goes through `_send`, and every
transport exception through `_failure`: the one boundary that refuses redirects, ignores the
environment's proxies and translates errors; every connection obeys the address policy
(guard.py).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import requests
import urllib3.exceptions

from metamcp.addresses import AddressPolicy, AddressRefused
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.upstream.call import (
    TRANSPORT_ERRORS,
    OversizedReply,
    UpstreamError,
    UpstreamTimeout,
)
from metamcp.mcp.upstream.guard import GuardedAdapter
from metamcp.mcp.upstream.interface import Upstream
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)

USER_AGENT = "metamcp"
#: Connections kept open per upstream and worker. Opened only on demand, so it is an upper
#: bound: each concurrent call holds one, and a smaller pool would close (and log) every
#: connection beyond it after use once many calls run at once.
POOL_SIZE = 1024
#: Read timeout of standing GET streams (they may be idle; a dead peer is noticed after this).
STREAM_IDLE_TIMEOUT = 300.0
#: Read timeout of best-effort messages (cancellations, replies to pings, DELETE).
QUIET_TIMEOUT = 2.0
#: Wait for the end of a reply stream after its response, so the connection can be reused.
DRAIN_SECONDS = 0.25
#: Reconnecting a notification stream: first after this, doubling up to the maximum.
LISTEN_BACKOFF_MIN, LISTEN_BACKOFF_MAX = 1.0, 60.0


class HttpUpstream(Upstream):
    """An upstream reached over HTTP; subclasses speak one HTTP transport."""

    def __init__(self, config: ServerConfig, *, policy: AddressPolicy | None = None, **kwargs: Any) -> None:
        if not config.url:
            raise UpstreamError(f"upstream {config.name!r}: no URL configured")
        super().__init__(config, **kwargs)
        self._url = config.url
        #: Checked on every connection, after DNS resolution (the default: always-refused only).
        self._http = _new_session(config, policy or AddressPolicy())

    def state(self) -> None:
        return None  # nothing runs in this process but the connection pool

    def stderr_lines(self) -> list[str]:
        return []

    def close(self) -> None:
        """Stop background threads and close every pooled connection. Idempotent."""
        super().close()
        self._http.close()

    def _send(self, method: str, url: str, action: str, *, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None, timeout: tuple[float, float] | None = None,
              redirect_fails: bool = True) -> requests.Response:
        """One HTTP request (streamed, never redirected); transport errors become UpstreamError,
        and so does a redirect unless `redirect_fails` is False (the caller looks at it)."""
        self._check_open()
        try:
            response = self._http.request(
                method, url, json=body, headers=headers, timeout=timeout or self._timeout(),
                stream=True, allow_redirects=False)
        except TRANSPORT_ERRORS as e:
            raise self._failure(e, action, sending=True) from e
        if 300 <= response.status_code < 400 and redirect_fails:
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


def content_type(response: requests.Response) -> str:
    """The media type of a response, lower case, without parameters."""
    return response.headers.get("Content-Type", "").partition(";")[0].strip().lower()


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
