"""Clients of upstream MCP servers: Streamable HTTP and legacy HTTP+SSE, over requests.

One client per upstream server per process, shared by every downstream session. Each owns one
requests.Session (keep-alive pool), initializes lazily (once, under a lock) and sends only the
credentials configured for its server. Timeouts: `connect` to open a connection, `read`
between two pieces of data, so every progress notification restarts a call's clock.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from metamcp.errors import MetaMCPError
from metamcp.mcp import jsonrpc, sse
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-11-25"
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
CLIENT_INFO = {"name": "metamcp", "version": "0.1.0"}
MAX_PAGES = 100
ACCEPT_BOTH = "application/json, text/event-stream"

Notify = Callable[[str, dict[str, Any]], None]


class UpstreamError(MetaMCPError):
    """An upstream could not be reached or answered something that is not MCP."""

    status, code = 502, "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "gateway_timeout"


class UpstreamRpcError(Exception):
    """The upstream answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class PendingCall:
    """One request in flight: iterate for its notifications, then its response."""

    def __init__(self, request_id: int, messages: Iterator[dict[str, Any]],
                 on_cancel: Callable[[str | None], None]) -> None:
        self.request_id = request_id
        self._messages = messages
        self._on_cancel = on_cancel
        self._done = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for message in self._messages:
            if "method" not in message:
                self._done = True
            yield message
            if self._done:
                return

    def cancel(self, reason: str | None = None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._on_cancel(reason)

    def close(self) -> None:
        self.cancel("the client went away")


def abort(response: requests.Response | None) -> None:
    """Close a streaming response that another thread may be blocked reading.

    A plain close() waits for that read to return (the buffered reader's lock), which on an
    idle stream can take as long as the peer's keep-alive interval; shutting the socket down
    first wakes the reader at once.
    """
    if response is None:
        return
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
    response.close()


def _response_of(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        raise UpstreamRpcError(int(error.get("code", jsonrpc.INTERNAL_ERROR)),
                               str(error.get("message", "upstream error")), error.get("data"))
    result = message.get("result")
    return result if isinstance(result, dict) else {}


class Upstream:
    """What the gateway needs of any upstream; subclasses speak one transport."""

    def __init__(self, config: ServerConfig, *, connect_timeout: float, read_timeout: float,
                 on_notification: Notify | None = None) -> None:
        self.name = config.name
        self.config = config
        self._timeouts = (connect_timeout, read_timeout)
        self._on_notification = on_notification
        self._ids = itertools.count(1)
        self._init_lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._closed = threading.Event()
        self.http = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=64, max_retries=0)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.http.headers.clear()
        self.http.headers.update({"User-Agent": "metamcp", **config.headers})
        if config.bearer_token:
            self.http.headers["Authorization"] = f"Bearer {config.bearer_token}"

    @property
    def server_info(self) -> dict[str, Any] | None:
        return self._info

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> PendingCall:
        raise NotImplementedError

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def request(self, method: str, params: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> dict[str, Any]:
        """The result of one request; UpstreamRpcError for a JSON-RPC error answer."""
        for message in self.call(method, params, timeout=timeout):
            if "method" not in message:
                return _response_of(message)
        raise UpstreamError(f"{self.name}: the upstream closed the call without a response")

    def list_all(self, method: str, key: str, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list, following nextCursor (at most MAX_PAGES pages)."""
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(MAX_PAGES):
            result = self.request(method, {"cursor": cursor} if cursor else None, timeout=timeout)
            page = result.get(key)
            items += [item for item in page if isinstance(item, dict)] if isinstance(page, list) else []
            cursor = result.get("nextCursor")
            if not cursor:
                return items
        logger.warning("%s: %s stopped after %s pages", self.name, method, MAX_PAGES)
        return items

    def close(self) -> None:
        self._closed.set()
        self.http.close()

    def _timeout(self, read: float | None) -> tuple[float, float]:
        return (self._timeouts[0], read if read is not None else self._timeouts[1])

    def _fail(self, error: requests.RequestException, action: str) -> UpstreamError:
        if isinstance(error, requests.Timeout) or "Read timed out" in str(error):
            return UpstreamTimeout(f"{self.name}: no answer in time while {action}")
        return UpstreamError(f"{self.name}: cannot reach the server while {action} ({type(error).__name__})")

    def _initialize_params(self) -> dict[str, Any]:
        return {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}

    def _accept_initialize(self, result: dict[str, Any]) -> None:
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_VERSIONS:
            raise UpstreamError(f"{self.name}: unsupported protocol version {version!r}")
        self._info = result


class StreamableHttpUpstream(Upstream):
    """MCP Streamable HTTP (2025-03-26 and later), JSON or SSE replies."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._session_id: str | None = None
        self._listener: threading.Thread | None = None
        self._listen_response: requests.Response | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        if self._info is not None:
            headers["MCP-Protocol-Version"] = str(self._info["protocolVersion"])
        return headers

    def _post(self, message: dict[str, Any], timeout: float | None, action: str) -> requests.Response:
        assert self.config.url is not None
        try:
            return self.http.post(self.config.url, data=json.dumps(message), headers=self._headers(),
                                  timeout=self._timeout(timeout), stream=True)
        except requests.RequestException as e:
            raise self._fail(e, action) from e

    def _ensure_initialized(self) -> None:
        if self._info is not None:
            return
        with self._init_lock:
            if self._info is not None:
                return
            self._session_id = None
            response = self._post(jsonrpc.request(0, "initialize", self._initialize_params()),
                                  None, "initializing")
            session_id = response.headers.get("Mcp-Session-Id")
            result = _response_of(self._final(response, 0, "initializing"))
            self._session_id = session_id
            self._accept_initialize(result)
            self._send(jsonrpc.notification("notifications/initialized"))
            if self._on_notification is not None and self._listener is None:
                self._listener = threading.Thread(target=self._listen, daemon=True,
                                                  name=f"metamcp-upstream-{self.name}")
                self._listener.start()

    def _final(self, response: requests.Response, request_id: int, action: str) -> dict[str, Any]:
        for message in self._messages(response, request_id, action):
            if "method" not in message:
                return message
        raise UpstreamError(f"{self.name}: no response while {action}")

    def _messages(self, response: requests.Response, request_id: int,
                  action: str) -> Iterator[dict[str, Any]]:
        """The messages of one POST's reply: JSON, or an SSE stream ending with the response."""
        try:
            if response.status_code >= 400:
                raise UpstreamError(f"{self.name}: HTTP {response.status_code} while {action}")
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("application/json"):
                yield self._decode(response.content, action)
                return
            if not content_type.startswith("text/event-stream"):
                raise UpstreamError(f"{self.name}: unexpected content type {content_type!r} while {action}")
            for event in sse.iter_events(response.iter_lines()):
                if event.event != "message" or not event.data:
                    continue
                message = self._decode(event.data.encode(), action)
                if "method" not in message and message.get("id") != request_id:
                    continue  # a response to something else: not ours
                if "method" in message and "id" in message:
                    continue  # a server-to-client request: not supported, skip
                yield message
                if "method" not in message:
                    return
            raise UpstreamError(f"{self.name}: the stream ended without a response while {action}")
        except requests.RequestException as e:
            raise self._fail(e, action) from e
        except AttributeError as e:
            # urllib3 reading a response that another thread closed (a cancelled call).
            raise UpstreamError(f"{self.name}: the call was cancelled while {action}") from e
        finally:
            response.close()

    def _decode(self, body: bytes, action: str) -> dict[str, Any]:
        try:
            message = json.loads(body)
        except ValueError as e:
            raise UpstreamError(f"{self.name}: invalid JSON while {action}") from e
        if not isinstance(message, dict):
            raise UpstreamError(f"{self.name}: not a JSON-RPC message while {action}")
        return message

    def _send(self, message: dict[str, Any]) -> None:
        response = self._post(message, None, f"sending {message.get('method')}")
        response.close()
        if response.status_code >= 400 and response.status_code != 404:
            logger.warning("%s: %s answered HTTP %s", self.name, message.get("method"), response.status_code)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> PendingCall:
        self._ensure_initialized()
        request_id = next(self._ids)
        message = jsonrpc.request(request_id, method, params)
        action = f"calling {method}"
        sent_with = self._session_id
        response = self._post(message, timeout, action)
        if response.status_code == 404 and sent_with is not None:
            # The upstream forgot our session (it restarted): initialize again, retry once.
            response.close()
            logger.info("%s: session expired; initializing again", self.name)
            with self._init_lock:
                if self._session_id == sent_with:
                    self._info = None
            self._ensure_initialized()
            response = self._post(message, timeout, action)
        holder = {"response": response}

        def cancel(reason: str | None) -> None:
            cancel_params: dict[str, Any] = {"requestId": request_id}
            if reason:
                cancel_params["reason"] = reason
            try:
                self._send(jsonrpc.notification("notifications/cancelled", cancel_params))
            except UpstreamError:
                pass  # best effort: the upstream may be gone
            finally:
                abort(holder["response"])

        return PendingCall(request_id, self._messages(response, request_id, action), cancel)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._ensure_initialized()
        self._send(jsonrpc.notification(method, params))

    def _listen(self) -> None:
        """The standing GET stream: server-initiated notifications (list_changed, ...)."""
        assert self.config.url is not None
        backoff = 1.0
        while not self._closed.is_set():
            try:
                with self.http.get(self.config.url, stream=True, timeout=(self._timeouts[0], 300),
                                   headers={**self._headers(), "Accept": "text/event-stream"}) as response:
                    self._listen_response = response
                    if response.status_code in (404, 405):
                        return  # not offered (or our session ended: the next call re-initializes)
                    if response.status_code >= 400:
                        raise UpstreamError(f"HTTP {response.status_code}")
                    backoff = 1.0
                    for event in sse.iter_events(response.iter_lines()):
                        if self._closed.is_set():
                            return
                        self._dispatch_event(event.data)
            except (requests.RequestException, UpstreamError) as e:
                logger.debug("%s: notification stream ended (%s)", self.name, e)
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 60.0)

    def _dispatch_event(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if isinstance(message, dict) and "method" in message and "id" not in message:
            if self._on_notification is not None:
                self._on_notification(self.name, message)

    def close(self) -> None:
        if self._session_id and self.config.url:
            try:
                self.http.delete(self.config.url, headers=self._headers(), timeout=(1.0, 1.0))
            except requests.RequestException:
                pass  # the session times out on the upstream anyway
        self._closed.set()
        abort(self._listen_response)
        super().close()


class LegacySseUpstream(Upstream):
    """HTTP+SSE (2024-11-05): a GET stream for replies, POSTs to the endpoint it names."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._endpoint: str | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stream: requests.Response | None = None
        self._pending: dict[int, queue.SimpleQueue[dict[str, Any] | None]] = {}
        self._tokens: dict[str, tuple[int, Any]] = {}
        self._lock = threading.Lock()

    def _connect(self) -> None:
        if self._info is not None and self._reader is not None and self._reader.is_alive():
            return
        with self._init_lock:
            if self._info is not None and self._reader is not None and self._reader.is_alive():
                return
            self._info, self._endpoint = None, None
            self._ready.clear()
            self._reader = threading.Thread(target=self._read, daemon=True,
                                            name=f"metamcp-sse-{self.name}")
            self._reader.start()
            if not self._ready.wait(self._timeouts[0] + self._timeouts[1]) or self._endpoint is None:
                raise UpstreamError(f"{self.name}: no endpoint event on the SSE stream")
            request_id = next(self._ids)
            result = self._wait_result(request_id, "initialize", self._initialize_params(), None)
            self._accept_initialize(result)
            self._post(jsonrpc.notification("notifications/initialized"), "sending initialized")

    def _read(self) -> None:
        assert self.config.url is not None
        try:
            response = self.http.get(self.config.url, stream=True, headers={"Accept": "text/event-stream"},
                                     timeout=(self._timeouts[0], None))
            self._stream = response
            if response.status_code >= 400:
                raise UpstreamError(f"HTTP {response.status_code}")
            for event in sse.iter_events(response.iter_lines()):
                if event.event == "endpoint":
                    endpoint = urljoin(self.config.url, event.data.strip())
                    if urlsplit(endpoint)[:2] != urlsplit(self.config.url)[:2]:
                        logger.warning("%s: refusing an endpoint on another origin", self.name)
                        return
                    self._endpoint = endpoint
                    self._ready.set()
                elif event.event == "message":
                    self._route(event.data)
        except (requests.RequestException, UpstreamError, AttributeError) as e:
            if not self._closed.is_set():
                logger.warning("%s: SSE stream failed (%s)", self.name, type(e).__name__)
        finally:
            self._ready.set()
            with self._lock:
                self._info = None
                waiting = list(self._pending.values())
            for box in waiting:
                box.put(None)  # fail every call in flight on this stream

    def _route(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        box = None
        with self._lock:
            if "method" not in message:
                box = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            elif message.get("method") == "notifications/progress":
                params = message.get("params") or {}
                owner = self._tokens.get(str(params.get("progressToken")))
                if owner is not None:
                    box = self._pending.get(owner[0])
                    message = {**message, "params": {**params, "progressToken": owner[1]}}
        if box is not None:
            box.put(message)
        elif "method" in message and "id" not in message and self._on_notification is not None:
            self._on_notification(self.name, message)

    def _post(self, message: dict[str, Any], action: str) -> None:
        assert self._endpoint is not None
        try:
            response = self.http.post(self._endpoint, data=json.dumps(message), timeout=self._timeout(None),
                                      headers={"Content-Type": "application/json"})
        except requests.RequestException as e:
            raise self._fail(e, action) from e
        response.close()
        if response.status_code >= 400:
            raise UpstreamError(f"{self.name}: HTTP {response.status_code} while {action}")

    def _register(self, request_id: int, params: dict[str, Any] | None) -> tuple[
            queue.SimpleQueue[dict[str, Any] | None], dict[str, Any] | None]:
        box: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self._lock:
            self._pending[request_id] = box
            meta = (params or {}).get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                # Replies share one stream: give each call a token of its own, map it back.
                token = f"metamcp-{request_id}"
                self._tokens[token] = (request_id, meta["progressToken"])
                params = {**(params or {}), "_meta": {**meta, "progressToken": token}}
        return box, params

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)
            for token in [t for t, owner in self._tokens.items() if owner[0] == request_id]:
                del self._tokens[token]

    def _messages(self, request_id: int, box: queue.SimpleQueue[dict[str, Any] | None],
                  timeout: float | None, action: str) -> Iterator[dict[str, Any]]:
        wait = self._timeout(timeout)[1]
        try:
            while True:
                try:
                    message = box.get(timeout=wait)
                except queue.Empty:
                    raise UpstreamTimeout(f"{self.name}: no answer in time while {action}") from None
                if message is None:
                    raise UpstreamError(f"{self.name}: the SSE stream closed while {action}")
                yield message
                if "method" not in message:
                    return
        finally:
            self._forget(request_id)

    def _wait_result(self, request_id: int, method: str, params: dict[str, Any] | None,
                     timeout: float | None) -> dict[str, Any]:
        box, params = self._register(request_id, params)
        try:
            self._post(jsonrpc.request(request_id, method, params), f"calling {method}")
        except UpstreamError:
            self._forget(request_id)
            raise
        for message in self._messages(request_id, box, timeout, f"calling {method}"):
            if "method" not in message:
                return _response_of(message)
        raise UpstreamError(f"{self.name}: no response to {method}")

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> PendingCall:
        self._connect()
        request_id = next(self._ids)
        box, params = self._register(request_id, params)
        try:
            self._post(jsonrpc.request(request_id, method, params), f"calling {method}")
        except UpstreamError:
            self._forget(request_id)
            raise

        def cancel(reason: str | None) -> None:
            self._forget(request_id)
            box.put(None)
            cancel_params: dict[str, Any] = {"requestId": request_id}
            if reason:
                cancel_params["reason"] = reason
            try:
                self._post(jsonrpc.notification("notifications/cancelled", cancel_params), "cancelling")
            except UpstreamError:
                pass  # best effort

        return PendingCall(request_id, self._messages(request_id, box, timeout, f"calling {method}"),
                           cancel)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._connect()
        self._post(jsonrpc.notification(method, params), f"sending {method}")

    def close(self) -> None:
        self._closed.set()
        abort(self._stream)
        super().close()


def create_upstream(config: ServerConfig, **kwargs: Any) -> Upstream:
    if config.transport == "streamable_http":
        return StreamableHttpUpstream(config, **kwargs)
    if config.transport == "sse":
        return LegacySseUpstream(config, **kwargs)
    raise UpstreamError(f"{config.name}: the stdio transport is not supported yet")
