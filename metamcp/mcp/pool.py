"""The upstream clients of this process: one kept per active server, and requests forwarded on them.

The pool reads the active servers from the registry (again only after a change), makes each
server's client at first use and drops (and closes) it when its server changes or leaves. It
knows nothing of lists or downstream sessions: whoever wires it sets `on_notification` (what
the kept clients hear) and `on_drop` (a server's client was dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp.children import ChildRecords, run_dir
from metamcp.mcp.health import Health
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.protocol import REQUEST_TIMEOUT, SERVER_BUSY, UPSTREAM_ERROR
from metamcp.mcp.upstream.call import GatewayStopping, PendingCall, UpstreamError, UpstreamTimeout
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.interface import AskClient, ClientMeta, Respond, Upstream, fallback_answer
from metamcp.servers import ServerConfig, ServerRegistry, Unreadable
from metamcp.stdio_policy import StdioPolicy

logger = logging.getLogger(__name__)

#: Seconds a request waits for another thread's registry reload before using the last one.
RELOAD_WAIT = 1.0
#: What the client of a call in flight when the process stops is told (it may retry elsewhere).
STOPPING = "The gateway is stopping; retry the request"


def client_error(server: str, error: UpstreamError | None = None) -> RpcError:
    """What an MCP client (or an endpoint's REST tool API) is told of an upstream failure: which
    server, and whether it timed out; never the cause. Causes (connection refused, HTTP 404, ...)
    would make the gateway a port scanner of the network behind it: they go to the log and to
    the admin routes. An upstream's own JSON-RPC error answer is not a failure and passes as is.
    """
    if isinstance(error, UpstreamTimeout):
        return RpcError(REQUEST_TIMEOUT, f"Upstream server {server!r} timed out")
    if isinstance(error, GatewayStopping):
        return RpcError(SERVER_BUSY, STOPPING)
    return RpcError(UPSTREAM_ERROR, f"Upstream server {server!r} is unavailable")


@dataclass
class _State:
    configs: dict[str, ServerConfig] | None = None
    #: Active servers left out of `configs`: this ENCRYPTION_KEY cannot open their secrets.
    unreadable: dict[str, Unreadable] = field(default_factory=dict)
    #: Registry changes heard, and the count the configs were read after (equal: current).
    wanted: int = 0
    loaded: int = 0
    clients: dict[str, tuple[ServerConfig, Upstream]] = field(default_factory=dict)


class Pool:
    """This process's clients of the active servers, each made at first use."""

    def __init__(self, registry: ServerRegistry, settings: Settings, health: Health,
                 executor: Executor) -> None:
        self._registry = registry
        self._settings = settings
        self._health = health
        #: Closes dropped clients and reconciles after a registry change, off the caller's thread.
        self._executor = executor
        #: Hears every notification of a kept client: (server, message).
        self.on_notification: Callable[[str, dict[str, Any]], None] | None = None
        #: Hears every request a kept client's upstream makes outside a call: (server, request,
        #: respond); without it such requests get the answers of a client that offers nothing.
        self.on_request: AskClient | None = None
        #: Told, under the pool's lock, each server whose client a registry reload dropped.
        self.on_drop: Callable[[str], None] | None = None
        self._state = _State()
        self._lock = threading.RLock()
        self._reloading = threading.Lock()
        #: Stdio children this process may run at once.
        self._children = threading.BoundedSemaphore(settings.stdio_max_children)
        self._child_records = ChildRecords(run_dir(settings.data_dir))
        #: Set by stop(): what every call ends with from then on.
        self._stopped: GatewayStopping | None = None

    # --- the registry ------------------------------------------------------------------------

    def servers(self) -> dict[str, ServerConfig]:
        """Active servers by name; read from the database only after a change. While the
        database is away, the last registry read keeps serving."""
        state = self._state
        if state.configs is not None and state.loaded == state.wanted:
            return state.configs
        # A reload normally takes milliseconds (and callers expect to see a change they just
        # made); a reload stuck on an unreachable database must not hold warm requests long.
        if not self._reloading.acquire(timeout=RELOAD_WAIT if state.configs is not None else -1):
            assert state.configs is not None
            return state.configs
        try:
            if state.configs is not None and state.loaded == state.wanted:
                return state.configs
            wanted = state.wanted
            try:
                loaded = self._registry.load()
            except DatabaseUnavailable:
                if state.configs is None:
                    raise
                return state.configs
            fresh = {config.name: config for config in loaded.configs}
            with self._lock:
                state.unreadable = {problem.name: problem for problem in loaded.unreadable}
                dropped = [name for name, (config, _) in state.clients.items() if fresh.get(name) != config]
                # The new configs first: a list still arriving for a server that left is not kept.
                state.configs, state.loaded = fresh, wanted
                for name in dropped:
                    _, client = state.clients.pop(name)
                    if self.on_drop is not None:
                        self.on_drop(name)
                    self._executor.submit(client.close)
            return fresh
        finally:
            self._reloading.release()

    def unreadable(self) -> dict[str, Unreadable]:
        """Active servers the gateway cannot use because this ENCRYPTION_KEY cannot open their
        secrets (as of the last registry read), by name: shown as errors, not hidden."""
        self.servers()
        return self._state.unreadable

    def config(self, name: str) -> ServerConfig | None:
        """`name`'s definition as last read from the registry (nothing is read now)."""
        return (self._state.configs or {}).get(name)

    def registry_changed(self) -> None:
        """Read the registry again at next use, keeping the last read meanwhile."""
        with self._lock:
            self._state.wanted += 1
        # Reconcile now, not at the next request: a removed stdio server's child stops at once.
        self._executor.submit(self.servers)

    # --- clients -------------------------------------------------------------------------------

    def client(self, name: str) -> Upstream:
        """The kept client of active server `name`, made at first use; -32602 for no such server."""
        entry = self._state.clients.get(name)
        if entry is not None:
            return entry[1]
        config = self.servers().get(name)
        if config is None and name in self._state.unreadable:
            raise RpcError(UPSTREAM_ERROR, self._state.unreadable[name].message)
        if config is None:
            raise RpcError(INVALID_PARAMS, f"No active server named {name!r}")
        with self._lock:
            entry = self._state.clients.get(name)
            if entry is None:
                entry = (config, self._create(config, listen=True))
                self._state.clients[name] = entry
        return entry[1]

    def kept(self, name: str) -> Upstream | None:
        """The kept client of `name`, if this process has one (no connection is made)."""
        entry = self._state.clients.get(name)
        return entry[1] if entry is not None else None

    def open(self, config: ServerConfig) -> Upstream:
        """A new client for `config`, active or not, that the pool does not keep: the caller
        closes it."""
        return self._create(config, listen=False)

    def _create(self, config: ServerConfig, listen: bool) -> Upstream:
        extra: dict[str, Any] = {}
        if config.transport == "stdio":
            extra = {"start_timeout": self._settings.stdio_start_timeout,
                     "idle_timeout": self._settings.stdio_idle_timeout,
                     "children": self._children, "records": self._child_records,
                     "stdio_policy": StdioPolicy.from_settings(self._settings)}
        upstream = create_upstream(
            config,
            connect_timeout=self._settings.upstream_connect_timeout,
            read_timeout=self._settings.upstream_timeout,
            on_notification=self._heard if listen else None,
            on_request=self._asked if listen else None,
            policy=self._settings.upstream_policy,
            **extra,
        )
        if self._stopped is not None:
            upstream.abort_calls(self._stopped)
        return upstream

    def _heard(self, server: str, message: dict[str, Any]) -> None:
        if self.on_notification is not None:
            self.on_notification(server, message)

    def _asked(self, server: str, message: dict[str, Any], respond: Respond) -> None:
        if self.on_request is not None:
            self.on_request(server, message, respond)
        else:
            respond(fallback_answer(message))

    # --- forwarding ----------------------------------------------------------------------------

    def call(self, server: str, method: str, params: dict[str, Any],
             client: ClientMeta | None = None) -> PendingCall:
        """A client's call: its failure is recorded and logged, the client gets client_error."""
        try:
            call = self.client(server).call(method, params, client=client)
        except UpstreamError as e:
            raise self._failed(server, e) from None
        return call

    def request(self, server: str, method: str, params: dict[str, Any],
                client: ClientMeta | None = None) -> dict[str, Any]:
        """A client's request (RpcError: the upstream's answer); failures as in call()."""
        try:
            result = self.client(server).request(method, params, client=client)
        except UpstreamError as e:
            raise self._failed(server, e) from None
        self._health.record_success(server)
        return result

    def subscribe(self, server: str, uri: str) -> None:
        """Have `server`'s kept client hear updates of `uri` (Upstream.subscribe: 2025
        resources/subscribe, or the 2026-07-28 listen filter); failures as in request()."""
        try:
            self.client(server).subscribe(uri)
        except UpstreamError as e:
            raise self._failed(server, e) from None

    def _failed(self, server: str, error: UpstreamError) -> RpcError:
        """Record an upstream's failure (not a call ended by stop()); what its client is told."""
        if not isinstance(error, GatewayStopping):
            self._health.record_failure(server, str(error))
        return client_error(server, error)

    # --- the end ---------------------------------------------------------------------------------

    def stop(self, grace: float = 0.0) -> None:
        """The process stops: calls still in flight after `grace` seconds (at once when none is)
        end with GatewayStopping, so their threads are free at once; so do calls made later.
        Clients stay open (close() closes them). Returns once every reader is interrupted."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.calls_in_flight for c in self._kept()):
            time.sleep(0.02)
        with self._lock:
            self._stopped = GatewayStopping("the gateway is stopping")  # also the upstream's reason
        for client in self._kept():
            client.abort_calls(self._stopped)

    def _kept(self) -> list[Upstream]:
        with self._lock:
            return [client for _, client in self._state.clients.values()]

    def close(self, wait: float = 10.0) -> None:
        """Close every kept client, in parallel, waiting at most `wait` seconds for them (a
        stdio child gets its grace periods before SIGKILL; one still stopping after `wait`
        goes with this process: the master reaps what it leaves, see metamcp.mcp.children)."""
        with self._lock:
            clients = [c for _, c in self._state.clients.values()]
            self._state = _State()
        # In parallel: each close may wait (briefly) on an upstream that does not answer.
        closers = [threading.Thread(target=c.close, daemon=True) for c in clients]
        for closer in closers:
            closer.start()
        deadline = time.monotonic() + wait
        for closer in closers:
            closer.join(timeout=max(0.0, deadline - time.monotonic()))
