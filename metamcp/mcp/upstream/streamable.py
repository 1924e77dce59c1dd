"""Streamable HTTP upstreams (MCP 2025-03-26 and later): a POST per message, JSON or SSE replies.

Before its first request the client probes `server/discover` (era.py). An upstream that lists
2026-07-28 gets the requests of 2026 clients, and the gateway's own, statelessly (stateless.py,
the base class). 2025 clients' requests (all requests, to a 2025-only upstream) go on a session: its id
comes from the initialize reply; a 404 while holding it means the upstream forgot us (it
restarted), so the client initializes again and retries that message once. Notifications of a
session arrive on an optional standing GET stream.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.protocol import (
    ACCEPT_BOTH,
    JSON_TYPE,
    LAST_EVENT_ID_HEADER,
    SESSION_HEADER,
    SSE_TYPE,
    UNSUPPORTED_VERSION,
    VERSION_HEADER,
)
from metamcp.mcp.upstream.call import (
    TRANSPORT_ERRORS,
    Exchange,
    PendingCall,
    UpstreamError,
    is_response,
)
from metamcp.mcp.upstream.era import Era
from metamcp.mcp.upstream.http import (
    DRAIN_SECONDS,
    LISTEN_BACKOFF_MAX,
    LISTEN_BACKOFF_MIN,
    QUIET_TIMEOUT,
    STREAM_IDLE_TIMEOUT,
    content_type,
)
from metamcp.mcp.upstream.interface import ClientMeta
from metamcp.mcp.upstream.stateless import StatelessHttpUpstream
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)

#: Visible ASCII, as the specification requires of session ids.
SESSION_ID = re.compile(r"[\x21-\x7e]{1,1024}")
#: A reply stream that ends before its response is resumed (GET with Last-Event-ID) while it
#: makes progress, but at most this often in a row without any, and this often in all.
MAX_FRUITLESS_RESUMES, MAX_RESUMES = 2, 100
DEFAULT_RETRY_MS, MAX_RETRY_MS = 1000, 5000
#: Methods 2026-07-28 removed: a dual-era upstream still gets them on the session.
SESSION_ONLY = frozenset({"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})


class InitializeRefused(UpstreamError):
    """The upstream refused `initialize` as a 2026-07-28-only server does (-32022)."""


@dataclass(frozen=True)
class _Session:
    """What initialize gave us; replaced as a whole, so a reader never sees half of one."""

    id: str | None
    version: str
    info: dict[str, Any]


class StreamableHttpUpstream(StatelessHttpUpstream):
    """An upstream speaking MCP Streamable HTTP: 2026-07-28 (the base class) and 2025 sessions."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._session: _Session | None = None
        self._listener: threading.Thread | None = None
        self._listening: Exchange | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None, client: ClientMeta | None = None) -> PendingCall:
        """The request goes out when iteration starts, so call() never waits for an answer
        (a JSON-replying upstream sends nothing until it is done). Probing and initialization
        happen here, though: an unreachable upstream fails now.

        In 2026-07-28 when the upstream speaks it and the request is a 2026 client's or the
        gateway's own (`client` None), or the upstream speaks nothing else; else on the session."""
        era = self._probed(timeout)
        if era.modern and (not era.legacy or (
                (client is None or client.modern) and method not in SESSION_ONLY)):
            return self._modern_call(era, method, params, timeout, client)
        try:
            self._initialized(timeout)
        except InitializeRefused:
            if not era.modern:
                raise
            logger.info("upstream %s: refuses initialize; speaking 2026-07-28 only", self.name)
            self._era = Era(modern=True, legacy=False, info=era.info)
            return self._modern_call(self._era, method, params, timeout, client)
        return self._legacy_call(method, params, timeout)

    def _legacy_call(self, method: str, params: dict[str, Any] | None,
                     timeout: float | None) -> PendingCall:
        action = f"calling {method}"
        request_id = self._next_id()
        exchange = Exchange()
        sent: list[_Session] = []  # the session the request went out on, once it did

        def send_cancelled(reason: str | None) -> None:
            if not sent:
                return  # never sent: nothing to cancel
            params: dict[str, Any] = {"requestId": request_id}
            if reason:
                params["reason"] = reason
            self._post_quietly(sent[-1], jsonrpc.notification("notifications/cancelled", params),
                               "cancelling a call")

        def respond(message: dict[str, Any]) -> None:
            if sent:
                self._post_quietly(sent[-1], message, "answering the upstream")

        messages = self._exchange(exchange, jsonrpc.request(request_id, method, params), sent,
                                  timeout, action)
        call = PendingCall(request_id, messages, interrupt=exchange.interrupt,
                           release=lambda polite: exchange.release(DRAIN_SECONDS if polite else 0.0),
                           send_cancelled=send_cancelled, respond=respond)
        return self._calls.add(call)

    def _exchange(self, exchange: Exchange, message: dict[str, Any], sent: list[_Session],
                  timeout: float | None, action: str) -> Iterator[dict[str, Any]]:
        session, response = self._post_retrying(message, timeout, action, sent)
        if exchange.attach(response):
            yield from self._replies(exchange, message["id"], session, timeout, action)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """To the session. 2026-07-28 has no notifications from client to server outside a call
        (roots/list_changed is gone, a call is cancelled by closing its stream): without a
        session to send it on, a notification for a modern upstream is dropped."""
        era = self._probed(None)
        if era.modern and (not era.legacy or self._session is None):
            logger.debug("upstream %s: %s dropped (2026-07-28, no session)", self.name, method)
            return
        action = f"sending {method}"
        _, response = self._post_retrying(jsonrpc.notification(method, params), None, action, [])
        self._accepted_notification(response, action)

    def close(self) -> None:
        """End the upstream session (DELETE), stop the listener, close the pool."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._listen_lock:
            listening, subscription = self._listening, self._subscription
        for stream in (listening, subscription):
            if stream is not None:
                stream.interrupt()
        for thread in (self._listener, self._subscriber):
            if thread is not None:
                thread.join(timeout=1.0)
        session = self._session
        if session is not None and session.id is not None:
            try:
                self._http.delete(self._url, headers=self._headers(session, None),
                                  timeout=self._timeout(QUIET_TIMEOUT), allow_redirects=False).close()
            except TRANSPORT_ERRORS:
                logger.debug("upstream %s: DELETE of the session failed", self.name)
            # Any status will do: 405 (not offered) and 404 (already gone) included.
        super().close()

    # --- session ------------------------------------------------------------------------

    def _initialized(self, timeout: float | None = None) -> _Session:
        """The session, initializing it first if needed (once, whatever the concurrency)."""
        session = self._session
        if session is not None:
            return session
        arrived = time.monotonic()
        with self._init_lock:
            if self._session is None:
                self._failed_meanwhile(arrived)
                try:
                    self._session = self._handshake(timeout)
                except UpstreamError as e:
                    self._init_failure = (time.monotonic(), e)
                    era = self._era
                    if era is not None and not era.modern and not isinstance(e, InitializeRefused):
                        self._era = None  # a 2025 upstream that fails: ask again what it speaks
                    raise
                if self._era is None or not self._era.modern:
                    self._info = self._session.info
                self._start_listener()
            return self._session

    def _handshake(self, timeout: float | None) -> _Session:
        action = "initializing"
        request_id = self._next_id()
        response = self._post(None, jsonrpc.request(request_id, "initialize", self._initialize_params()),
                              timeout, action)
        session_id = response.headers.get(SESSION_HEADER)
        if session_id is not None and not SESSION_ID.fullmatch(session_id):
            response.close()
            raise UpstreamError(f"upstream {self.name!r}: sent an invalid session id while {action}")
        exchange = Exchange(response)
        try:
            reply = next((m for m in self._replies(exchange, request_id, None, timeout, action)
                          if is_response(m)), None)
        finally:
            exchange.release(DRAIN_SECONDS)
        if reply is None:
            raise UpstreamError(f"upstream {self.name!r}: no initialize result")
        error = reply.get("error")
        if isinstance(error, dict) and error.get("code") == UNSUPPORTED_VERSION:
            raise InitializeRefused(f"upstream {self.name!r}: initialize refused (2026-07-28 only)")
        result = self._accepted(reply)
        session = _Session(session_id, result["protocolVersion"], result)
        action = "sending notifications/initialized"
        self._accepted_notification(
            self._post(session, jsonrpc.notification("notifications/initialized"), timeout, action), action)
        logger.info("upstream %s: initialized (protocol %s)", self.name, session.version)
        return session

    def _expire(self, session: _Session) -> None:
        """Forget `session` unless another thread has already replaced it."""
        with self._init_lock:
            if self._session is session:
                self._session = None

    def _headers(self, session: _Session | None, accept: str | None = ACCEPT_BOTH) -> dict[str, str]:
        headers = {"Accept": accept} if accept else {}
        if session is not None:
            if session.id is not None:
                headers[SESSION_HEADER] = session.id
            headers[VERSION_HEADER] = session.version
        return headers

    def _post(self, session: _Session | None, message: dict[str, Any], timeout: float | None,
              action: str) -> requests.Response:
        return self._send("POST", self._url, action, body=message, headers=self._headers(session),
                          timeout=self._timeout(timeout))

    def _post_retrying(self, message: dict[str, Any], timeout: float | None, action: str,
                       sent: list[_Session]) -> tuple[_Session, requests.Response]:
        """POST on the current session; a 404 on it initializes again and retries once."""
        session = self._initialized(timeout)
        sent.append(session)
        response = self._post(session, message, timeout, action)
        if response.status_code == 404 and session.id is not None:
            # The upstream no longer knows our session (it restarted): initialize, retry once.
            response.close()
            logger.info("upstream %s: session expired; initializing again", self.name)
            self._expire(session)
            self._era = None if self._era is not None and not self._era.modern else self._era
            session = self._initialized(timeout)
            sent.append(session)
            response = self._post(session, message, timeout, action)
        return session, response

    def _accepted_notification(self, response: requests.Response, action: str) -> None:
        status = response.status_code
        Exchange(response).discard()
        if status >= 400:
            raise UpstreamError(f"upstream {self.name!r}: HTTP {status} while {action}")

    def _post_quietly(self, session: _Session, message: dict[str, Any], action: str) -> None:
        """Best effort (a cancellation, a reply to a ping): failures are only logged."""
        try:
            response = self._send("POST", self._url, action, body=message,
                                  headers=self._headers(session), timeout=self._timeout(QUIET_TIMEOUT))
            Exchange(response).discard()
        except UpstreamError as e:
            logger.debug("upstream %s: %s", self.name, e)

    # --- calls --------------------------------------------------------------------------

    def _replies(self, exchange: Exchange, request_id: int | str, session: _Session | None,
                 timeout: float | None, action: str) -> Iterator[dict[str, Any]]:
        read = self._timeout(timeout)[1]
        try:
            response = exchange.response
            assert response is not None
            status, kind = response.status_code, content_type(response)
            if status >= 400:
                reply = self._error_reply(exchange, kind, request_id, action)
                if reply is None:
                    raise UpstreamError(f"upstream {self.name!r}: HTTP {status} while {action}")
                yield reply
                return
            if status == 202 or kind not in (JSON_TYPE, SSE_TYPE):
                raise UpstreamError(f"upstream {self.name!r}: answered HTTP {status} "
                                    f"({kind or 'no body'}) to a request while {action}")
            if kind == JSON_TYPE:
                reply = self._parse(exchange.read_all(), action)
                if not is_response(reply) or reply.get("id") != request_id:
                    raise UpstreamError(f"upstream {self.name!r}: answered with another message "
                                        f"than the response while {action}")
                exchange.answered = True
                yield reply
                return
            yield from self._stream(exchange, request_id, session, read, action)
        except TRANSPORT_ERRORS as e:
            raise self._failure(e, action, read_timeout=read) from e

    def _error_reply(self, exchange: Exchange, kind: str, request_id: int | str,
                     action: str) -> dict[str, Any] | None:
        """A JSON-RPC error carried by an HTTP error (as SDK servers send), else None."""
        if kind != JSON_TYPE:
            return None
        try:
            message = self._parse(exchange.read_all(), action)
        except UpstreamError:
            return None
        if "error" not in message or message.get("id") not in (request_id, None):
            return None
        exchange.answered = True
        return {**message, "id": request_id}

    def _stream(self, exchange: Exchange, request_id: int | str, session: _Session | None, read: float,
                action: str) -> Iterator[dict[str, Any]]:
        """An SSE reply: the call's notifications and requests, then its response; resumed if it
        breaks off."""
        last_id: str | None = None
        retry_ms, fruitless = DEFAULT_RETRY_MS, 0
        for _ in range(MAX_RESUMES + 1):
            progressed = False
            for event in sse.decode(exchange.chunks()):
                if event.id is not None and event.id != last_id:
                    last_id, progressed = event.id, True
                if event.retry is not None:
                    retry_ms = event.retry
                if event.event != "message" or not event.data:
                    continue
                message = self._parse(event.data, action)
                progressed = True
                if is_response(message):
                    if message.get("id") == request_id:
                        exchange.answered = True
                        yield message
                        return
                    logger.debug("upstream %s: a response to another request, dropped", self.name)
                elif "id" not in message and is_session_wide(message["method"]):
                    self._deliver(message)
                else:
                    yield message
            fruitless = 0 if progressed else fruitless + 1
            if last_id is None or session is None or fruitless > MAX_FRUITLESS_RESUMES:
                break
            # The upstream ended the stream early (2025-11-25 polling): resume where it stopped.
            if exchange.aborted.wait(min(retry_ms, MAX_RETRY_MS) / 1000):
                break
            if not exchange.attach(self._resume(session, last_id, read, action)):
                break
        raise UpstreamError(f"upstream {self.name!r}: the stream ended without a response while {action}")

    def _resume(self, session: _Session, last_id: str, read: float, action: str) -> requests.Response:
        headers = {**self._headers(session, SSE_TYPE), LAST_EVENT_ID_HEADER: last_id}
        response = self._send("GET", self._url, action, headers=headers, timeout=self._timeout(read))
        if response.status_code != 200 or content_type(response) != SSE_TYPE:
            response.close()
            raise UpstreamError(f"upstream {self.name!r}: resuming the stream failed "
                                f"(HTTP {response.status_code}) while {action}")
        return response

    # --- server-initiated messages (the standing GET stream) -----------------------------

    def _start_listener(self) -> None:
        if self._on_notification is None or self._listener is not None:
            return
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name=f"metamcp-upstream-{self.name}")
        self._listener.start()

    def _listen(self) -> None:
        delay = LISTEN_BACKOFF_MIN
        while not self._closed.is_set():
            try:
                if not self._listen_once():
                    logger.debug("upstream %s: no notification stream offered", self.name)
                    return
                delay = LISTEN_BACKOFF_MIN  # it was up: reconnect soon
            except UpstreamError as e:
                if self._closed.is_set():
                    return
                logger.debug("upstream %s: notification stream: %s", self.name, e)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, LISTEN_BACKOFF_MAX)

    def _listen_once(self) -> bool:
        """Hold one GET stream until it ends; False if the upstream offers none (405)."""
        action = "listening for notifications"
        session = self._initialized()
        response = self._send("GET", self._url, action, headers=self._headers(session, SSE_TYPE),
                              timeout=self._timeout(STREAM_IDLE_TIMEOUT))
        exchange = Exchange(response)
        with self._listen_lock:
            self._listening = exchange
        if self._closed.is_set():
            exchange.interrupt()
        try:
            if response.status_code == 405:
                return False
            if response.status_code == 404 and session.id is not None:
                self._expire(session)
            if response.status_code != 200 or content_type(response) != SSE_TYPE:
                raise UpstreamError(f"HTTP {response.status_code}")
            for event in sse.decode(exchange.chunks()):
                if event.event == "message" and event.data:
                    message = self._parse(event.data, action)
                    if "method" not in message:
                        continue
                    if "id" in message:  # a request outside any call
                        self._ask_client(message, lambda m: self._post_quietly(
                            session, m, "answering the upstream"))
                    else:
                        self._deliver(message)
            return True
        except TRANSPORT_ERRORS as e:
            raise self._failure(e, action, read_timeout=STREAM_IDLE_TIMEOUT) from e
        finally:
            with self._listen_lock:
                self._listening = None
            exchange.release()


def is_session_wide(method: str) -> bool:
    """Notifications about the server as a whole, even when they arrive on a call's stream."""
    return method.endswith("/list_changed") or method == "notifications/resources/updated"
