"""One call to an upstream in flight: the errors it may end in, PendingCall (the gateway's
handle on it), CallSet (a client's calls in flight, ended at once when the process stops) and
Exchange (an HTTP response one thread reads and any thread can interrupt).
"""

from __future__ import annotations

import http.client
import inspect
import itertools
import logging
import queue
import socket
import threading
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import requests
import urllib3.exceptions

from metamcp.errors import MetaMCPError
from metamcp.mcp import jsonrpc, sse

logger = logging.getLogger(__name__)

#: Largest JSON body we read from an upstream.
MAX_BODY_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 64 * 1024


class OversizedReply(ValueError):
    """A reply body beyond MAX_BODY_BYTES."""


#: What a transport read may raise; translated into UpstreamError at this one boundary.
TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError,
                    http.client.HTTPException, sse.SseError, OversizedReply, OSError)


class UpstreamError(MetaMCPError):
    """An upstream could not be reached or answered something that is not MCP."""

    status, code = 502, "bad_gateway"


class UpstreamTimeout(UpstreamError):
    """An upstream did not answer (or connect) in time."""

    status, code = 504, "gateway_timeout"


class GatewayStopping(UpstreamError):
    """The call was ended because this process stops (no fault of the upstream)."""

    status, code = 503, "unavailable"


def is_response(message: dict[str, Any]) -> bool:
    return "method" not in message


def is_request(message: dict[str, Any]) -> bool:
    """A request from the upstream to its client (sampling, elicitation, roots, ping)."""
    return "method" in message and "id" in message


def result_of(message: dict[str, Any]) -> dict[str, Any]:
    """The result of a response message; jsonrpc.RpcError (the upstream's own) for an error response."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        code = error.get("code")
        raise jsonrpc.RpcError(code if isinstance(code, int) else jsonrpc.INTERNAL_ERROR,
                               str(error.get("message", "upstream error")), error.get("data"))
    result = message.get("result")
    return result if isinstance(result, dict) else {}


class PendingCall:
    """One request in flight. Iterate (once) for its notifications, the requests the upstream
    makes of its client on the call's stream (answer each with respond()), then its response.

    cancel() and close() may come from any thread, also while another thread iterates: the
    reader is interrupted and its iteration simply ends. Resources are released exactly once:
    by the reader when it stops early, else by close() (or by iterating past the response).
    Close every call: a forgotten one is only released when garbage-collected.
    """

    def __init__(self, request_id: int, messages: Iterator[dict[str, Any]], *,
                 interrupt: Callable[[], None], release: Callable[[bool], None],
                 send_cancelled: Callable[[str | None], None],
                 respond: Callable[[dict[str, Any]], None]) -> None:
        #: The id of this request on the upstream wire.
        self.request_id = request_id
        #: It went out in 2026-07-28 (no session; input the upstream needs comes back as an
        #: `input_required` result), not as a request of a 2025 session.
        self.modern = False
        #: Sends the upstream our response to a request it made on this call's stream (any thread).
        self.respond = respond
        self._messages = messages
        self._interrupt = interrupt
        self._release = release  # release(polite): polite may wait briefly to reuse the connection
        self._send_cancelled = send_cancelled
        self._lock = threading.Lock()
        self._reader: int | None = None  # thread id while an iteration is under way
        # Weak: the generator's frame holds self, and a cycle would leave a forgotten call
        # to the cyclic garbage collector instead of freeing it at once.
        self._generator: weakref.ref[Generator[dict[str, Any], None, None]] | None = None
        self._started = self._answered = self._stopped = self._released = False
        #: What the reader's iteration raises once stopped by abort() (cancel() just ends it).
        self._failure: UpstreamError | None = None
        #: The CallSet that holds this call while it is in flight.
        self._owner: CallSet | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            if self._started:
                raise RuntimeError("a PendingCall can be iterated only once")
            self._started = True
            if self._stopped:
                return self._ended()
            self._reader = threading.get_ident()
        generator = self._iterate()
        self._generator = weakref.ref(generator)
        return generator

    def _ended(self) -> Iterator[dict[str, Any]]:
        if self._failure is not None:
            raise self._failure
        yield from ()

    def _iterate(self) -> Generator[dict[str, Any], None, None]:
        try:
            for message in self._messages:
                if self._stopped:
                    break
                if is_response(message):
                    self._answered = True  # before yielding: closing after this sends no cancel
                    yield message
                    self._release_once(polite=True)  # iterated past the end: finish here
                    return
                yield message
        except UpstreamError:
            if not self._stopped:
                raise  # after cancel(), a read failing is the expected outcome
        finally:
            close = getattr(self._messages, "close", None)
            if close is not None:
                close()
            with self._lock:
                self._reader = None
            # Never I/O here: this also runs when a forgotten generator is garbage-collected.
            self._release_once(polite=False)
        if self._failure is not None:
            raise self._failure

    @property
    def answered(self) -> bool:
        """The response has arrived (closing the call now sends no cancellation)."""
        return self._answered

    def cancel(self, reason: str | None = None) -> None:
        """Stop reading, free the connection, tell the upstream (best effort). Idempotent."""
        self._stop(reason)

    def close(self) -> None:
        """cancel() if the response has not arrived yet, else just release resources."""
        self._stop(None)

    def abort(self, failure: UpstreamError) -> None:
        """cancel() on the gateway's behalf: the reader's iteration raises `failure` instead of
        simply ending, and the upstream is told `failure.message` as the reason. Idempotent."""
        self._stop(failure.message, failure)

    def _stop(self, reason: str | None, failure: UpstreamError | None = None, tell: bool = True) -> bool:
        """Stop the call; whether the upstream is owed a cancellation (sent here if `tell`)."""
        with self._lock:
            first, self._stopped = not self._stopped, True
            if first and failure is not None and not self._answered:
                self._failure = failure
            answered, reader = self._answered, self._reader
        if answered:
            self._release_once(polite=True)  # the reader has had its response: nobody reads
        elif first:
            self._interrupt()
        generator = self._generator() if self._generator is not None else None
        if reader is None:
            self._release_once(polite=False)
        elif (reader == threading.get_ident() and generator is not None
              and inspect.getgeneratorstate(generator) != inspect.GEN_RUNNING):
            # Our own iteration, suspended (the caller stopped iterating): finish it here.
            generator.close()
            self._release_once(polite=False)  # in case it never started (then no finally ran)
        # Otherwise another thread is reading: interrupted, it releases when it returns.
        owed = first and not answered
        if owed and tell:
            self._send_cancelled(reason)
        return owed

    def _release_once(self, polite: bool) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            owner = self._owner
        if owner is not None:
            owner.discard(self)
        self._release(polite)


class CallSet:
    """One client's calls in flight (until released), so that a stopping process can end them
    all at once: abort_all() interrupts every reader, and calls added afterwards end at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Weak: a forgotten call must still be garbage-collected (and so released).
        self._calls: weakref.WeakSet[PendingCall] = weakref.WeakSet()
        self._failure: UpstreamError | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def add(self, call: PendingCall) -> PendingCall:
        """Hold `call` while it is in flight; returns it."""
        with self._lock:
            failure = self._failure
            if failure is None:
                self._calls.add(call)
                call._owner = self
        if failure is not None:
            call.abort(failure)  # made while the process stops
        return call

    def discard(self, call: PendingCall) -> None:
        with self._lock:
            self._calls.discard(call)

    def abort_all(self, failure: UpstreamError) -> None:
        """End every call with `failure` (PendingCall.abort), now and for calls added later.

        Returns once every reader is interrupted; the upstream is told of the cancellations on
        a thread of its own (a hung upstream may take its whole timeout to take each one)."""
        with self._lock:
            self._failure = failure
            calls = list(self._calls)
        owed = [call for call in calls if call._stop(failure.message, failure, tell=False)]
        if owed:
            threading.Thread(target=_tell_cancelled, args=(owed, failure.message), daemon=True,
                             name="metamcp-cancel").start()


def _tell_cancelled(calls: list[PendingCall], reason: str) -> None:
    for call in calls:
        try:
            call._send_cancelled(reason)
        except Exception:  # noqa: BLE001 - best effort on a thread of its own: the rest still go
            logger.debug("telling an upstream of a cancelled call failed", exc_info=True)


class Exchange:
    """The HTTP response of a call, read by one thread and interruptible from any other.

    The reader attaches the response, reads chunks() and finally release()s; interrupt()
    unblocks a read in progress by shutting the socket down (closing it from another thread
    would not wake the reader). A response attached after interrupt() is closed at once.
    """

    def __init__(self, response: requests.Response | None = None) -> None:
        self.response = response
        self.eof = False
        #: The call's response has been read (release() then waits briefly for the end).
        self.answered = False
        self.aborted = threading.Event()
        self._lock = threading.Lock()
        #: The connection a request is going out on, before its response arrives (see sending()).
        self._connection: Any = None

    def sending(self, connection: Any) -> None:
        """The request goes out on `connection`: interrupt() shuts it down until a response is
        attached (at once, if interrupted already)."""
        with self._lock:
            self._connection = connection
            aborted = self.aborted.is_set()
        if aborted:
            _shutdown(connection)

    def attach(self, response: requests.Response) -> bool:
        """Read `response` from now on (the first, or a resumed stream); False if interrupted."""
        with self._lock:
            old, self.response, self.eof = self.response, response, False
        if old is not None:
            old.close()
        if self.aborted.is_set():
            response.close()
            return False
        return True

    def chunks(self) -> Iterator[bytes]:
        assert self.response is not None
        raw = self.response.raw
        while not self.aborted.is_set():
            data = raw.read1(CHUNK_BYTES, decode_content=True)
            if not data:
                self.eof = True
                return
            yield data

    def read_all(self, limit: int = MAX_BODY_BYTES) -> bytes:
        body = bytearray()
        for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                raise OversizedReply(f"a reply of more than {limit} bytes")
        return bytes(body)

    def discard(self) -> None:
        """Read a short body to its end (so the connection is reused) and release."""
        try:
            self.read_all(CHUNK_BYTES)
        except TRANSPORT_ERRORS:
            pass  # the body does not matter; release() closes what is left
        self.release()

    def interrupt(self) -> None:
        with self._lock:
            self.aborted.set()
            if self.response is None:
                if self._connection is not None:
                    _shutdown(self._connection)  # still waiting for the response's headers
                return
            try:
                self.response.raw.shutdown()
            except (ValueError, RuntimeError, OSError, AttributeError):
                pass  # not reading (already released, or an urllib3 before 2.3)

    def release(self, drain_seconds: float = 0.0) -> None:
        """Free the connection: pooled again if the body was read to its end, else closed.

        With `drain_seconds`, first wait that long for the end of a stream whose response
        has arrived (servers end a reply stream right after it), so the connection is reused.
        """
        with self._lock:
            response = self.response
        if response is None:
            return
        if not self.eof and drain_seconds and self.answered and not self.aborted.is_set():
            try:
                sock = getattr(response.raw.connection, "sock", None)
                if isinstance(sock, socket.socket):
                    sock.settimeout(drain_seconds)
                for _ in itertools.islice(self.chunks(), 16):
                    pass
            except TRANSPORT_ERRORS:
                pass
        # At the end of the body urllib3 has already put the connection back in the pool (and
        # this is a no-op); before it, this closes the connection.
        response.close()


def _shutdown(connection: Any) -> None:
    """Wake a thread blocked reading `connection` (an urllib3 connection) by shutting its socket."""
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


#: A call's inbox: its messages, or None when the channel closed or the call was cancelled.
Inbox = queue.SimpleQueue[dict[str, Any] | None]


class Inboxes:
    """Calls waiting for replies on one shared channel (an SSE stream, a child's stdout).

    Replies are routed by id; progress notifications by a progressToken rewritten to be unique
    on the channel, and mapped back on the way down.
    """

    def __init__(self) -> None:
        self.alive = True
        self._lock = threading.Lock()
        self._inboxes: dict[int, Inbox] = {}
        self._tokens: dict[str, tuple[int, Any]] = {}  # our progressToken -> (call, theirs)

    def register(self, request_id: int, params: dict[str, Any] | None
                 ) -> tuple[Inbox, dict[str, Any] | None]:
        """An inbox for the call; its params with a progressToken only this call uses."""
        inbox: Inbox = queue.SimpleQueue()
        meta = (params or {}).get("_meta")
        with self._lock:
            self._inboxes[request_id] = inbox
            if isinstance(meta, dict) and "progressToken" in meta:
                # Every reply shares one stream: a token of our own, mapped back on the way down.
                token = f"metamcp-{request_id}"
                self._tokens[token] = (request_id, meta["progressToken"])
                params = {**(params or {}), "_meta": {**meta, "progressToken": token}}
        if not self.alive:
            inbox.put(None)
        return inbox, params

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._inboxes.pop(request_id, None)
            self._tokens.pop(f"metamcp-{request_id}", None)

    def route(self, message: dict[str, Any]) -> bool:
        """Hand a reply or progress notification to its call; False if it belongs to none."""
        with self._lock:
            if is_response(message):
                inbox = self._inboxes.get(message.get("id"))  # type: ignore[arg-type]
            elif message["method"] == "notifications/progress":
                params = message.get("params") or {}
                owner = self._tokens.get(str(params.get("progressToken")))
                if owner is None:
                    return False
                inbox = self._inboxes.get(owner[0])
                message = {**message, "params": {**params, "progressToken": owner[1]}}
            else:
                return False
        if inbox is None:
            return is_response(message)  # a reply nobody waits for any more: dropped
        inbox.put(message)
        return True

    def fail_all(self) -> None:
        self.alive = False
        with self._lock:
            inboxes = list(self._inboxes.values())
        for inbox in inboxes:
            inbox.put(None)
