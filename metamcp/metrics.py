"""Prometheus metrics: the metric objects, the sink that records each finished request, and the
small calls the pool, health tracker, limits, database and sessions make when something happens.

prometheus_client is imported by `enable()` (create_app, in each worker), never at import:
gunicorn's master imports modules that call in here, and prometheus_client picks its storage
once, at its own import, from PROMETHEUS_MULTIPROC_DIR, which the master sets before it forks
(`prepare_directory`). With the variable, every worker writes its values to files there and
/metrics merges them (one view of all workers); without it (tests, a bare create_app) the
process's own registry serves. Until `enable()` every call here does nothing.

Labels are bounded: routes are the registered URL rules, MCP and HTTP methods outside a known
set become `other`, and server and tool labels come only from routed operations (a name that
matched no registered tool never becomes a label).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from metamcp.observe import ERROR, OK, Observation

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)
P = ParamSpec("P")

#: Seconds; the gateway's own share of a call is usually well under a millisecond.
GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds of a whole call or of its upstream: from sub-millisecond to the longest timeouts.
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The variable prometheus_client reads at its import (gunicorn's master sets it).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: MCP methods a client may send (any revision); others are counted as `other`.
MCP_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "prompts/list", "prompts/get",
    "resources/list", "resources/templates/list", "resources/read", "resources/subscribe",
    "resources/unsubscribe", "completion/complete", "logging/setLevel", "server/discover",
    "subscriptions/listen", "notifications/initialized", "notifications/cancelled",
    "notifications/progress", "notifications/roots/list_changed",
})
#: Routes whose GET is a standing stream: its duration is how long the client listened.
STANDING_ROUTES = frozenset({"/mcp", "/metamcp/<endpoint>/mcp", "/metamcp/<endpoint>/sse"})
#: A 2026-07-28 POST that stands open as long as the client listens.
LISTEN = "subscriptions/listen"
TOOLS_CALL = "tools/call"
#: Kinds of limit rejections (metamcp.limits, metamcp.mcp.capacity).
RATE, AUTH_FAILURES, IN_FLIGHT, BUSY = "rate", "auth_failures", "in_flight", "busy"


class _Children:
    """A labelled metric's children by label values, kept here so the hot path is one dict
    lookup instead of `.labels()` (str() of every value and a lock)."""

    __slots__ = ("_metric", "_children")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[Any, ...], Any] = {}

    def __call__(self, *values: Any) -> Any:
        child = self._children.get(values)
        if child is None:  # .labels() returns the same child to racing threads
            child = self._children[values] = self._metric.labels(*values)
        return child


class Instruments:
    """Every metric of the gateway, created once per process. Under gunicorn each sample is a
    record in a worker's file whose key holds the help text: the per-tool ones are kept short
    (the README describes each metric)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, values

        #: Whether values go to PROMETHEUS_MULTIPROC_DIR (decided when prometheus_client was imported).
        self.multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        self.http_requests = _Children(Counter(
            "metamcp_http_requests_total", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"]))
        self.http_seconds = _Children(Histogram(
            "metamcp_http_request_duration_seconds",
            "Seconds from a request's arrival until its response was sent in full; standing streams "
            "(GET /mcp, legacy SSE, subscriptions/listen) are left out", ["route", "method"],
            buckets=HTTP_BUCKETS))
        self.mcp_requests = _Children(Counter(
            "metamcp_mcp_requests_total", "MCP requests and notifications, by method and outcome "
            "(ok, tool_error, error)", ["method", "outcome"]))
        self.tool_calls = _Children(Counter(
            "metamcp_tool_calls_total", "tools/call routed to a server", ["server", "tool", "outcome"]))
        self.tool_seconds = _Children(Histogram(
            "metamcp_tool_call_seconds", "tools/call seconds, whole", ["server", "tool"],
            buckets=CALL_BUCKETS))
        self.tool_upstream = _Children(Histogram(
            "metamcp_tool_call_upstream_seconds", "tools/call seconds waiting on the upstream",
            ["server", "tool"], buckets=CALL_BUCKETS))
        self.tool_gateway = _Children(Histogram(
            "metamcp_tool_call_gateway_seconds", "tools/call seconds added by the gateway",
            ["server", "tool"], buckets=GATEWAY_BUCKETS))
        self.in_flight = Gauge("metamcp_tool_calls_in_flight", "tools/call admitted and not yet ended",
                               multiprocess_mode="livesum")
        self.upstream_up = _Children(Gauge(
            "metamcp_upstream_up", "1 when the last request to the server succeeded, 0 when it "
            "failed (the most recent outcome any worker saw)", ["server"],
            multiprocess_mode="livemostrecent"))
        self.upstream_failures = _Children(Counter(
            "metamcp_upstream_failures_total", "Failed requests to a server (unreachable, timed out, "
            "refused a list)", ["server"]))
        self.stdio_children = _Children(Gauge(
            "metamcp_stdio_children", "Stdio child processes running", ["server"],
            multiprocess_mode="livesum"))
        self.stdio_restarts = _Children(Counter(
            "metamcp_stdio_restarts_total", "Unplanned exits and failed starts of a stdio child "
            "(it is started again at its next use)", ["server"]))
        self.limit_rejections = _Children(Counter(
            "metamcp_limit_rejections_total", "Requests refused by a limit: rate (429), auth_failures "
            "(429), in_flight (429), busy (503)", ["kind"]))
        self.db_in_use = Gauge("metamcp_db_connections_in_use", "Pooled database connections "
                               "checked out", multiprocess_mode="livesum")
        self.db_max = Gauge("metamcp_db_connections_max", "Database connections the pools may open",
                            multiprocess_mode="livesum")
        self.db_seconds = Histogram("metamcp_db_transaction_seconds", "Seconds a transaction held "
                                    "its connection (queries and commit)", buckets=DB_BUCKETS)
        self.sessions_created = Counter("metamcp_sessions_created_total", "MCP sessions created")
        self.sessions_ended = _Children(Counter(
            "metamcp_sessions_ended_total", "MCP sessions ended: deleted by their client, or expired "
            "and purged", ["reason"]))
        self.audit_dropped = Counter("metamcp_audit_dropped_total", "Audit records dropped because "
                                     "the audit queue was full")


_on: Instruments | None = None


def enable(db_pool_size: int = 0) -> Instruments:
    """Create the metrics of this process (once; later calls return them)."""
    global _on
    if _on is None:
        _on = Instruments()
    if db_pool_size:
        _on.db_max.set(db_pool_size)
    return _on


def instruments() -> Instruments | None:
    return _on


# --- the sink -------------------------------------------------------------------------------


def record(observation: Observation) -> None:
    """Sink of metamcp.observe: count a finished request, its MCP operations and, for a routed
    tools/call, its upstream and gateway-added time."""
    on = _on
    if on is None:
        return
    route, method, status = observation.route, observation.http_method, observation.status
    if method not in HTTP_METHODS:
        method = OTHER
    on.http_requests(route, method, status).inc()
    mcp_method = observation.mcp_method
    if status != 200 or not ((method == "GET" and route in STANDING_ROUTES) or mcp_method == LISTEN):
        on.http_seconds(route, method).observe(observation.duration)
    if not observation.operations:
        if mcp_method is not None:  # initialize, a notification, a refused request
            on.mcp_requests(mcp_method if mcp_method in MCP_METHODS else OTHER,
                            OK if status < 400 else ERROR).inc()
        return
    duration = observation.duration
    for op in observation.operations:
        name = op.method if op.method in MCP_METHODS else OTHER
        on.mcp_requests(name, op.outcome).inc()
        if name == TOOLS_CALL and op.server is not None:
            server, tool = op.server, op.upstream_name or op.name or ""
            upstream = op.upstream_seconds
            on.tool_calls(server, tool, op.outcome).inc()
            on.tool_seconds(server, tool).observe(duration)
            on.tool_upstream(server, tool).observe(upstream)
            on.tool_gateway(server, tool).observe(gateway_seconds(duration, upstream))


def gateway_seconds(duration: float, upstream: float) -> float:
    """What the gateway added to a call: its whole time minus the upstream's, never negative
    (the two clocks are read at slightly different moments)."""
    return duration - upstream if duration > upstream else 0.0


# --- instrumentation points -----------------------------------------------------------------


def _guarded(point: Callable[P, None]) -> Callable[P, None]:
    """An instrumentation point never fails its caller (a database transaction, an admission):
    a metric that cannot be written is logged once per process and the caller goes on."""

    @functools.wraps(point)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        global _failed
        try:
            point(*args, **kwargs)
        except Exception:  # noqa: BLE001 - boundary: serving matters more than counting
            if not _failed:
                _failed = True
                logger.exception("recording a metric failed; later failures are not logged")

    return guarded


_failed = False


@_guarded
def call_admitted() -> None:
    if _on is not None:
        _on.in_flight.inc()


@_guarded
def call_released() -> None:
    if _on is not None:
        _on.in_flight.dec()


@_guarded
def upstream_succeeded(server: str) -> None:
    if _on is not None:
        _on.upstream_up(server).set(1)


@_guarded
def upstream_failed(server: str) -> None:
    if _on is not None:
        _on.upstream_up(server).set(0)
        _on.upstream_failures(server).inc()


@_guarded
def child_started(server: str) -> None:
    if _on is not None:
        _on.stdio_children(server).inc()


@_guarded
def child_stopped(server: str) -> None:
    if _on is not None:
        _on.stdio_children(server).dec()


@_guarded
def child_crashed(server: str) -> None:
    if _on is not None:
        _on.stdio_restarts(server).inc()


@_guarded
def limit_rejected(kind: str) -> None:
    if _on is not None:
        _on.limit_rejections(kind).inc()


@_guarded
def db_checked_out() -> None:
    if _on is not None:
        _on.db_in_use.inc()


@_guarded
def db_returned(seconds: float) -> None:
    if _on is not None:
        _on.db_in_use.dec()
        _on.db_seconds.observe(seconds)


@_guarded
def session_created() -> None:
    if _on is not None:
        _on.sessions_created.inc()


@_guarded
def sessions_ended(reason: str, count: int = 1) -> None:
    if _on is not None and count > 0:
        _on.sessions_ended(reason).inc(count)


@_guarded
def audit_dropped(n: int = 1) -> None:
    """The audit queue was full and `n` records were dropped."""
    if _on is not None and n > 0:
        _on.audit_dropped.inc(n)


# --- exposition and the multiprocess directory ----------------------------------------------


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every worker (multiprocess), else of this process; and its
    content type. Empty when metrics are off in this process."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry: CollectorRegistry = REGISTRY
    if _on is not None and _on.multiprocess:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def prepare_directory(configured: Path | None) -> tuple[Path, bool]:
    """In gunicorn's master, before it forks: the multiprocess directory, emptied of the value
    files of an earlier run (they would be summed in). The operator's (PROMETHEUS_MULTIPROC_DIR)
    or a new temporary one; returns it and whether it was made here (to remove at exit)."""
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="metamcp-metrics-")), True
    configured.mkdir(parents=True, exist_ok=True)
    for stale in configured.glob("*.db"):
        stale.unlink(missing_ok=True)
    return configured, False


def process_dead(pid: int, directory: Path) -> None:
    """In gunicorn's master, once worker `pid` exited: its live gauges (in-flight calls, open
    connections, running children) leave the sums; its counters and histograms stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))
