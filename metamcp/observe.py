"""What one HTTP request did, gathered on its way and handed, once it has been answered, to
whoever records it: the metrics, the access log line and the audit log (the sinks).

The transport, the authentication and the dispatcher fill in the request's `Observation`
(found through `current()`, a context variable of the thread serving the request): who called,
which session and endpoint, and one `Operation` per JSON-RPC request it carried, with the
server it went to and the time spent waiting on that server. A streamed call keeps its
Operation and completes it from the thread that reads the upstream. `Observers.finish` runs
when the response has been sent in full (for a stream, when it ends), so the duration counts
everything the client waited for. Nothing here imports Flask or does I/O; a sink that fails is
logged and the others still run.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: An X-Request-Id a client or proxy sent that is kept as the request's id (else one is made).
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

#: Outcomes of an Operation.
OK, TOOL_ERROR, ERROR = "ok", "tool_error", "error"


def request_id(offered: str | None) -> str:
    """The id of a request: the caller's X-Request-Id when it is sane, else a new one."""
    if offered and SANE_REQUEST_ID.fullmatch(offered):
        return offered
    return secrets.token_hex(8)


@dataclass(eq=False)
class Operation:
    """One JSON-RPC request served: its method, what it named, where it went, how it ended."""

    method: str
    #: The tool or prompt as the client named it, or the resource's URI.
    name: str | None = None
    #: The upstream server it was routed to, and the name that server knows it by (None until
    #: routed: an unknown name never becomes a metric label).
    server: str | None = None
    upstream_name: str | None = None
    #: Seconds spent waiting on the upstream (from sending the request to its response).
    upstream_seconds: float = 0.0
    outcome: str = OK
    #: The JSON-RPC error code when outcome is ERROR.
    error_code: int | None = None
    _upstream_started: float | None = field(default=None, repr=False)

    def routed(self, server: str, upstream_name: str) -> None:
        self.server, self.upstream_name = server, upstream_name

    def upstream_started(self) -> None:
        self._upstream_started = time.perf_counter()

    def upstream_ended(self) -> None:
        """The upstream's response (or failure) arrived; adds the time since upstream_started()."""
        started, self._upstream_started = self._upstream_started, None
        if started is not None:
            self.upstream_seconds += time.perf_counter() - started

    def answered(self, message: dict[str, Any]) -> None:
        """Record how the answer the client gets ends: a result, a tool's error, or an error."""
        error = message.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            self.failed(code if isinstance(code, int) and not isinstance(code, bool) else None)
            return
        result = message.get("result")
        self.outcome = TOOL_ERROR if isinstance(result, dict) and result.get("isError") is True else OK
        self.error_code = None

    def failed(self, code: int | None) -> None:
        self.outcome, self.error_code = ERROR, code


@dataclass(eq=False)
class Observation:
    """One HTTP request, from its arrival until its response has been sent in full."""

    request_id: str
    http_method: str
    #: The route as registered (e.g. `/metamcp/<endpoint>/mcp`), or the path when none matched.
    route: str
    path: str
    client: str
    started: float = field(default_factory=time.perf_counter)
    #: Wall-clock time of arrival (seconds since the epoch), for records kept elsewhere.
    at: float = field(default_factory=time.time)
    key_id: int | None = None
    key_name: str | None = None
    role: str | None = None
    endpoint: str | None = None
    session: str | None = None
    #: The MCP method of the request's (first) JSON-RPC message, also when no Operation began
    #: (initialize, a notification, a refused call). None when the request was refused before
    #: its body was read (a bad credential).
    mcp_method: str | None = None
    operations: list[Operation] = field(default_factory=list)
    status: int = 0
    bytes_out: int = 0
    #: Seconds from arrival until the response was sent in full (set by Observers.finish).
    duration: float = 0.0
    #: Parties still to call Observers.finish: the response, and each hold().
    _holds: int = field(default=1, repr=False)

    def operation(self, method: str, name: str | None = None) -> Operation:
        op = Operation(method, name)
        self.operations.append(op)
        if self.mcp_method is None:
            self.mcp_method = method
        return op

    def hold(self) -> None:
        """Another party answers part of this request after its response (a legacy SSE POST is
        answered on the session's stream): the record reaches the sinks once it has finished too."""
        with _holds_lock:
            self._holds += 1

    @property
    def upstream_seconds(self) -> float:
        return sum(op.upstream_seconds for op in self.operations)


_holds_lock = threading.Lock()
_current: ContextVar[Observation | None] = ContextVar("metamcp_observation", default=None)


def current() -> Observation | None:
    """The Observation of the request this thread serves (None outside a request)."""
    return _current.get()


def begin(observation: Observation | None) -> None:
    """Make `observation` the current one of this thread (None: no request)."""
    _current.set(observation)


def operation(method: str, name: str | None = None) -> Operation:
    """A new Operation of the current request; outside a request, one nobody records."""
    observation = _current.get()
    return Operation(method, name) if observation is None else observation.operation(method, name)


Sink = Callable[[Observation], None]


class Observers:
    """The sinks every finished request is handed to, in the order they were added."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []

    def add(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def finish(self, observation: Observation) -> None:
        """One party is done with `observation`; the last one hands it to the sinks."""
        with _holds_lock:
            observation._holds -= 1
            if observation._holds > 0:
                return
        observation.duration = time.perf_counter() - observation.started
        for sink in self._sinks:
            try:
                sink(observation)
            except Exception:  # noqa: BLE001 - one sink failing must not cost the others
                logger.exception("recording a finished request failed")
