"""Multi round-trip requests (2026-07-28 `input_required`) across eras: this process's parked
upstream calls, the hand-over of a retry to the process that holds its call, and what a call
needs to seal states (metamcp.mcp.request_state) and retry upstream.

A 2026-07-28 client cannot be sent requests: when a 2025 upstream asks its client something
during a call, the gateway ends the client's response with an `input_required` result and parks
the upstream call (still open) here until the client retries with the answers, or the deadline
passes. The retry may reach any worker: the state names the process holding the call, and another
process hands the answers over through the database (a row and a NOTIFY) and relays back what the
holder produces (rows and NOTIFYs again). A 2026-07-28 upstream's own `input_required` needs no
parking: its state travels sealed inside the gateway's.
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from metamcp import repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import jsonrpc
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.protocol import MODERN_VERSION
from metamcp.mcp.request_state import Binding, Claims, StateCodec, invalid_state
from metamcp.mcp.sessions import Session
from metamcp.mcp.upstream.call import PendingCall, UpstreamTimeout, is_response
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

#: Rounds of `input_required` a call may go through before the gateway gives up on it.
MAX_ROUNDS = 10
#: How long a retry waits for the leg that parked its call to close (the client may retry
#: before the worker has finished closing the response that carried the state).
HOLD_WAIT = 5.0
#: Hand-over rows nobody took (a process died) are dropped after this many seconds.
HANDOVER_MAX_AGE = 3600


class Parkable(Protocol):
    """A call parked while its client is asked for input (metamcp.mcp.streamed.Streamed)."""

    def resume(self, request_id: Any, session: Session, responses: dict[str, Any],
               on_close: Callable[[], None]) -> None: ...

    def pump(self, put: Callable[[dict[str, Any] | None], None], stream: bool = True) -> None: ...

    def close(self) -> None: ...

    def cancel(self, reason: str | None) -> None: ...

    def expire(self, reason: str) -> None: ...


@dataclass
class _Slot:
    deadline: float  # monotonic
    call: Parkable | None = None  # None until the leg that parked it has closed


class Parking:
    """This process's parked calls, each under an id until its retry takes it or its deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._ids = itertools.count(1)
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Condition()
        self._sweeper: threading.Thread | None = None

    def reserve(self) -> tuple[str, float]:
        """An id for a call about to park, and its expiry (wall clock, for the state)."""
        parked_id = f"{next(self._ids)}.{secrets.token_urlsafe(9)}"
        with self._lock:
            self._slots[parked_id] = _Slot(time.monotonic() + self.deadline)
            self._lock.notify_all()
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True, name="metamcp-parking")
                self._sweeper.start()
        return parked_id, time.time() + self.deadline

    def hold(self, parked_id: str, call: Parkable) -> bool:
        """The parked call, once the response that carried its state has closed; False if its
        deadline passed meanwhile."""
        with self._lock:
            slot = self._slots.get(parked_id)
            if slot is None:
                return False
            slot.call = call
            self._lock.notify_all()
        return True

    def take(self, parked_id: str, wait: float = HOLD_WAIT) -> Parkable | None:
        """The call parked under `parked_id`, for its retry (once); None if unknown or expired."""
        end = time.monotonic() + wait
        with self._lock:
            while True:
                slot = self._slots.get(parked_id)
                if slot is None:
                    return None
                if slot.call is not None:
                    del self._slots[parked_id]
                    return slot.call
                if not self._lock.wait(timeout=end - time.monotonic()) and time.monotonic() >= end:
                    return None

    def _sweep(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                expired = [key for key, slot in self._slots.items() if slot.deadline <= now]
                if not expired:
                    soonest = min((slot.deadline for slot in self._slots.values()), default=now + 3600)
                    self._lock.wait(timeout=soonest - now)
                    continue
                calls = [self._slots.pop(key).call for key in expired]
            for call in calls:
                if call is not None:
                    call.expire(f"no retry within {self.deadline:g}s")


class _Outbox:
    """A holder's output for a retry served in another process: a row and a NOTIFY each."""

    def __init__(self, db: Database, handover_id: str, to: str) -> None:
        self._db, self._id, self._to = db, handover_id, to
        self._seq = itertools.count(1)
        self.ended = threading.Event()

    def put(self, message: dict[str, Any] | None) -> None:
        if message is None:
            self.ended.set()
            return
        try:
            with self._db.transaction() as cur:
                repository.insert_handover(cur, self._id, next(self._seq), message)
                repository.notify_change(cur, Topic.HANDOVER, to=self._to, id=self._id, kind="reply")
        except DatabaseUnavailable:
            logger.warning("a parked call's output for another process was lost: the database is away")


class Handover:
    """Retries that reach another process than the one holding their call: the answers go to the
    holder, and what it produces comes back, both through the database."""

    def __init__(self, db: Database, origin: str, parking: Parking, read_timeout: float) -> None:
        self._db = db
        self.origin = origin
        self._parking = parking
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._collecting = threading.Lock()
        self._inboxes: dict[str, queue.SimpleQueue[dict[str, Any] | None]] = {}  # retries served here
        self._serving: dict[str, Parkable] = {}  # calls held here, resumed for another process

    # --- the retry's side ---------------------------------------------------------------

    def forward(self, claims: Claims, responses: dict[str, Any], session: Session) -> PendingCall:
        """Hand the answers to the holder; the returned call yields what it produces."""
        assert claims.origin is not None and claims.parked is not None
        handover_id = f"{self.origin}.{secrets.token_urlsafe(12)}"
        inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self._lock:
            self._inboxes[handover_id] = inbox
        answers = {"parked": claims.parked, "inputResponses": responses, "logLevel": session.log_level,
                   "capabilities": sorted(session.capabilities)}
        try:
            with self._db.transaction() as cur:
                if not repository.is_listening(cur, claims.origin):  # it would not hear of them
                    raise invalid_state("names a call of a process that has ended")
                repository.purge_handovers(cur, HANDOVER_MAX_AGE)
                repository.insert_handover(cur, handover_id, 0, answers)
                repository.notify_change(cur, Topic.HANDOVER, to=claims.origin, id=handover_id,
                                         kind="answers", reply_to=self.origin)
        except BaseException:
            self._forget(handover_id)
            raise
        holder = claims.origin

        def cancelled(reason: str | None) -> None:
            try:
                with self._db.transaction() as cur:
                    repository.notify_change(cur, Topic.HANDOVER, to=holder, id=handover_id, kind="cancel",
                                             reason=reason)
            except DatabaseUnavailable:
                pass  # the holder's call runs into its own timeouts

        return PendingCall(0, self._replies(handover_id, inbox), interrupt=lambda: inbox.put(None),
                           release=lambda _polite: self._forget(handover_id), send_cancelled=cancelled,
                           respond=lambda _message: None)

    def _replies(self, handover_id: str, inbox: queue.SimpleQueue[dict[str, Any] | None]
                 ) -> Iterator[dict[str, Any]]:
        # The holder answers at once (or says the state is stale) within the parking deadline;
        # then each message within the upstream's own read timeout, as for any call.
        wait = self._parking.deadline + self._read_timeout
        while True:
            try:
                message = inbox.get(timeout=wait)
            except queue.Empty:
                raise UpstreamTimeout("the process holding a parked call did not answer") from None
            if message is None:
                return
            yield message
            if is_response(message):
                return
            wait = self._read_timeout + self._parking.deadline

    def _forget(self, handover_id: str) -> None:
        with self._lock:
            self._inboxes.pop(handover_id, None)

    def _collect(self, handover_id: str) -> None:
        with self._lock:
            inbox = self._inboxes.get(handover_id)
        if inbox is None:
            return
        # One take at a time: each takes every row committed so far, so the messages keep the
        # holder's order even when their NOTIFYs wake several threads.
        with self._collecting:
            try:
                with self._db.transaction() as cur:
                    rows = repository.take_handover_replies(cur, handover_id)
            except DatabaseUnavailable:
                return  # the retry runs into its deadline
            for row in sorted(rows, key=lambda r: r["seq"]):
                inbox.put(row["message"])

    # --- the holder's side --------------------------------------------------------------

    def on_change(self, details: dict[str, Any]) -> None:
        """The change bus: answers for a call parked here, a holder's output for a retry served
        here, or a retry's client gone."""
        handover_id = details.get("id")
        if details.get("to") != self.origin or not isinstance(handover_id, str):
            return
        kind = details.get("kind")
        if kind == "cancel":
            with self._lock:
                call = self._serving.get(handover_id)
            if call is not None:
                call.cancel(details.get("reason"))
            return
        # Off the listener's thread: both wait on the database, serving also on the upstream.
        if kind == "reply":
            threading.Thread(target=self._collect, args=(handover_id,), daemon=True).start()
        elif kind == "answers" and isinstance(details.get("reply_to"), str):
            threading.Thread(target=self._serve, args=(handover_id, details["reply_to"]), daemon=True,
                             name="metamcp-handover").start()

    def _serve(self, handover_id: str, reply_to: str) -> None:
        try:
            with self._db.transaction() as cur:
                row = repository.take_handover_answers(cur, handover_id)
        except DatabaseUnavailable:
            return  # the retry runs into its deadline
        if row is None:
            return
        answers = row["message"]
        outbox = _Outbox(self._db, handover_id, reply_to)
        call = self._parking.take(str(answers.get("parked")))
        if call is None:
            stale = invalid_state("has expired or was used already")
            outbox.put(jsonrpc.error(None, stale.code, stale.message))
            return
        with self._lock:
            self._serving[handover_id] = call
        try:
            session = _session_of(answers)
            call.resume(None, session, answers.get("inputResponses") or {}, lambda: None)
            call.pump(outbox.put)
            outbox.ended.wait(timeout=self._read_timeout * 2 + self._parking.deadline)
        finally:
            with self._lock:
                self._serving.pop(handover_id, None)
            call.close()


def _session_of(answers: dict[str, Any]) -> Session:
    """The retry's client as the holder needs it: what it can be asked and its log level."""
    capabilities = answers.get("capabilities")
    level = answers.get("logLevel")
    return replace(_HANDOVER_SESSION, log_level=level if isinstance(level, str) else None,
                   capabilities=frozenset(c for c in capabilities or () if isinstance(c, str)))


#: Stands for a retry's client in the holding process (its binding was verified by the sender).
_HANDOVER_SESSION = Session(id="2026.handover", key_id=None, protocol_version=MODERN_VERSION)


class Mrtr:
    """This process's side of multi round-trip requests: the codec, parked calls, hand-overs."""

    def __init__(self, secret: str, db: Database, origin: str, deadline: float, read_timeout: float) -> None:
        self.codec = StateCodec(secret)
        self.origin = origin
        self.parking = Parking(deadline)
        self.handover = Handover(db, origin, self.parking, read_timeout)

    def relabel(self, binding: Binding, server: str, result: dict[str, Any]) -> dict[str, Any]:
        """A 2026-07-28 upstream's `input_required`, its state sealed inside the gateway's."""
        upstream = result.get("requestState")
        claims = Claims(server, upstream_state=upstream if isinstance(upstream, str) else None)
        state = self.codec.seal(binding, time.time() + self.parking.deadline, claims)
        return {**result, "requestState": state}


@dataclass
class Rounds:
    """One call's round trips: how to seal states for its client and to retry it upstream."""

    mrtr: Mrtr
    binding: Binding
    server: str
    #: Retries the upstream call with the client's answers and the upstream's state.
    retry: Callable[[dict[str, Any], str | None], PendingCall]

    def park(self) -> tuple[str, str]:
        """A parking id for the call and the state that names it."""
        parked_id, expiry = self.mrtr.parking.reserve()
        claims = Claims(self.server, origin=self.mrtr.origin, parked=parked_id)
        return parked_id, self.mrtr.codec.seal(self.binding, expiry, claims)

    def relabel(self, result: dict[str, Any]) -> dict[str, Any]:
        return self.mrtr.relabel(self.binding, self.server, result)


def input_responses(params: dict[str, Any]) -> dict[str, Any]:
    """A retry's `inputResponses` (absent: none), checked: an object of result objects."""
    responses = params.get("inputResponses")
    if responses is None:
        return {}
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise RpcError(INVALID_PARAMS, "Invalid params: inputResponses must be an object of result objects")
    return responses


def with_input(params: dict[str, Any], responses: dict[str, Any], state: str | None) -> dict[str, Any]:
    """An upstream request's params retried with the client's answers and the upstream's state."""
    retried = {**params, "inputResponses": responses}
    if state is not None:
        retried["requestState"] = state
    return retried


def needs_input(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == "input_required"


def input_unavailable(method: str) -> RpcError:
    """A 2026-07-28 upstream wants input that a 2025 client cannot be asked on this request."""
    return RpcError(jsonrpc.INVALID_REQUEST,
                    f"The upstream server needs input from the client to answer {method}, and the client "
                    "cannot be asked on this request (it takes no event stream here)")
