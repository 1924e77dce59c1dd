"""A tools/call as its client sees it: the upstream call's messages pumped back, the upstream's
requests of its client relayed, and input needed across eras, in one leg per client request
(metamcp.mcp.mrtr). metamcp.mcp.streams carries the legs as SSE bodies.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, cast

from metamcp import observe
from metamcp.mcp import jsonrpc, modern, mrtr, protocol
from metamcp.mcp.jsonrpc import RpcError
from metamcp.mcp.mrtr import Rounds
from metamcp.mcp.pool import client_error
from metamcp.mcp.relay import Relay
from metamcp.mcp.sessions import Session
from metamcp.mcp.upstream.call import PendingCall, UpstreamError
from metamcp.mcp.upstream.interface import Respond, fallback_answer

logger = logging.getLogger(__name__)


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
        #: The record of the client request the current leg answers (metamcp.observe).
        self.operation: observe.Operation | None = None
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
                self._end_leg(jsonrpc.error(self.request_id, protocol.UPSTREAM_ERROR, "The call has ended"))
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
                self._end_leg({"jsonrpc": "2.0", "id": self.request_id, "error": message["error"]})
            else:
                self._end_leg(jsonrpc.result(self.request_id, self._shaped(message.get("result") or {})))
        return False

    def _end_leg(self, response: dict[str, Any]) -> None:
        """Send the leg's response and end it, recording how it ended (under the lock)."""
        assert self._put is not None
        if self.operation is not None:
            self.operation.upstream_ended()
            self.operation.answered(response)
        self._put(response)
        self._put(None)
        self._put = None

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
        self._end_leg(jsonrpc.result(self.request_id, self._shaped(
            {"resultType": "input_required", "inputRequests": requests, "requestState": state})))

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
                threading.Thread(target=contextvars.copy_context().run, args=(self.pump, messages.put, False),
                                 daemon=True, name="metamcp-leg").start()  # logged with the request's id
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
