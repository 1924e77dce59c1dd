"""MCP semantics of the gateway: aggregate upstream lists, name and route, forward calls.

One Gateway per process. It keeps one upstream client per active server, caches each
upstream's lists (refreshed on list_changed, on registry change and after a TTL) and fans lists
out in parallel on a bounded pool, so one slow or dead upstream costs at most its timeout and
never fails the aggregate. It knows nothing of HTTP or of downstream sessions.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import naming
from metamcp.mcp.children import ChildRecords, run_dir
from metamcp.mcp.jsonrpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    UPSTREAM_ERROR,
    RpcError,
)
from metamcp.mcp.upstream.call import PendingCall, UpstreamError, UpstreamTimeout
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.interface import Upstream
from metamcp.namespaces import NamespaceView
from metamcp.servers import ServerConfig, ServerRegistry
from metamcp.stdio_policy import StdioPolicy

logger = logging.getLogger(__name__)

#: Seconds a failed upstream is left out of list fan-outs before it is tried again.
RETRY_FAILED_AFTER = 5.0
#: Seconds a request waits for another thread's registry reload before using the last one.
RELOAD_WAIT = 1.0


def client_error(server: str, error: UpstreamError | None = None) -> RpcError:
    """What an MCP client (or an endpoint's REST tool API) is told of an upstream failure: which
    server, and whether it timed out; never the cause. Causes (connection refused, HTTP 404, ...)
    would make the gateway a port scanner of the network behind it: they go to the log and to
    the admin routes. An upstream's own JSON-RPC error answer is not a failure and passes as is.
    """
    if isinstance(error, UpstreamTimeout):
        return RpcError(REQUEST_TIMEOUT, f"Upstream server {server!r} timed out")
    return RpcError(UPSTREAM_ERROR, f"Upstream server {server!r} is unavailable")


@dataclass(frozen=True)
class Kind:
    method: str
    key: str
    capability: str
    named: bool  # tools and prompts get `server__` names; resources keep their URIs


KINDS = {
    "tools": Kind("tools/list", "tools", "tools", True),
    "prompts": Kind("prompts/list", "prompts", "prompts", True),
    "resources": Kind("resources/list", "resources", "resources", False),
    "resourceTemplates": Kind("resources/templates/list", "resourceTemplates", "resources", False),
}


@dataclass
class ServerList:
    """One upstream's list of one kind, as exposed, with its routes."""

    items: list[dict[str, Any]]
    routes: dict[str, str]  # exposed name or URI -> the upstream's own name or URI
    expires: float


@dataclass
class UpstreamHealth:
    status: str = "unknown"  # ok | error | unknown
    last_error: str | None = None
    checked_at: float | None = None
    failed_until: float = 0.0


@dataclass
class _State:
    configs: dict[str, ServerConfig] | None = None
    #: Registry changes heard, and the count the configs were read after (equal: current).
    wanted: int = 0
    loaded: int = 0
    upstreams: dict[str, tuple[ServerConfig, Upstream]] = field(default_factory=dict)
    lists: dict[tuple[str, str], ServerList] = field(default_factory=dict)


class Gateway:
    """Aggregates every active server (view None) or one namespace's (a NamespaceView)."""

    def __init__(
        self,
        registry: ServerRegistry,
        settings: Settings,
        publish: Callable[[str, dict[str, Any]], None] | None = None,
        on_tools: Callable[[UUID, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._registry = registry
        self._settings = settings
        #: Announces an upstream's list_changed to every process (LISTEN/NOTIFY).
        self._publish = publish
        #: Receives each fresh tools/list of a server (the tools table is kept from it).
        self._on_tools = on_tools
        self._state = _State()
        self._health: dict[str, UpstreamHealth] = {}
        self._lock = threading.RLock()
        self._reloading = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="metamcp-fanout")
        self._subscribers: list[Callable[[str], None]] = []
        #: Each namespace's tool table, with the view and lists it was made from.
        self._tables: dict[UUID, tuple[NamespaceView, tuple[tuple[str, ServerList | None], ...],
                                       dict[str, tuple[dict[str, Any], str, str]]]] = {}
        #: Stdio children this process may run at once.
        self._children = threading.BoundedSemaphore(settings.stdio_max_children)
        self._child_records = ChildRecords(run_dir(settings.data_dir))

    # --- registry and upstream clients ---------------------------------------------------

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
                fresh = {config.name: config for config in self._registry.configs()}
            except DatabaseUnavailable:
                if state.configs is None:
                    raise
                return state.configs
            with self._lock:
                for name, (config, upstream) in list(state.upstreams.items()):
                    if fresh.get(name) != config:
                        del state.upstreams[name]
                        self._drop_lists(name)
                        self._pool.submit(upstream.close)
                state.configs, state.loaded = fresh, wanted
            return fresh
        finally:
            self._reloading.release()

    def upstream(self, name: str) -> Upstream:
        entry = self._state.upstreams.get(name)
        if entry is not None:
            return entry[1]
        config = self.servers().get(name)
        if config is None:
            raise RpcError(INVALID_PARAMS, f"No active server named {name!r}")
        with self._lock:
            entry = self._state.upstreams.get(name)
            if entry is None:
                entry = (config, self.connect(config, listen=True))
                self._state.upstreams[name] = entry
        return entry[1]

    def connect(self, config: ServerConfig, listen: bool = False) -> Upstream:
        """A new client for `config` (the caller closes it unless the gateway keeps it)."""
        extra: dict[str, Any] = {}
        if config.transport == "stdio":
            extra = {"start_timeout": self._settings.stdio_start_timeout,
                     "idle_timeout": self._settings.stdio_idle_timeout,
                     "children": self._children, "records": self._child_records,
                     "stdio_policy": StdioPolicy.from_settings(self._settings)}
        return create_upstream(
            config,
            connect_timeout=self._settings.upstream_connect_timeout,
            read_timeout=self._settings.upstream_timeout,
            on_notification=self._upstream_notification if listen else None,
            policy=self._settings.upstream_policy,
            **extra,
        )

    def kept(self, name: str) -> Upstream | None:
        """This process's client of `name`, if it has one (no connection is made)."""
        entry = self._state.upstreams.get(name)
        return entry[1] if entry is not None else None

    def on_registry_change(self, _message: dict[str, Any]) -> None:
        with self._lock:
            self._state.wanted += 1  # reload at next use, keeping the old one meanwhile
        # Reconcile now, not at the next request: a removed stdio server's child stops at once.
        self._pool.submit(self.servers)
        self._announce(*KINDS)

    def on_namespace_change(self, _message: dict[str, Any]) -> None:
        self._announce(*KINDS)  # a server or tool came or went in some namespace

    def on_list_change(self, message: dict[str, Any]) -> None:
        server, kinds = message.get("server"), message.get("kinds") or list(KINDS)
        with self._lock:
            if not isinstance(server, str):  # the listener reconnected: anything may have changed
                self._state.lists.clear()
            else:
                for kind in kinds:
                    self._state.lists.pop((server, kind), None)
        self._announce(*kinds)

    def close(self) -> None:
        with self._lock:
            upstreams = [u for _, u in self._state.upstreams.values()]
            self._state = _State()
        # In parallel: each close may wait (briefly) on an upstream that does not answer.
        closers = [threading.Thread(target=u.close, daemon=True) for u in upstreams]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(timeout=10)  # a stdio child gets its grace periods before SIGKILL
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- list_changed subscribers (the GET streams of downstream sessions) ---------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def _announce(self, *kinds: str) -> None:
        methods = {KINDS[k].capability for k in kinds if k in KINDS}
        for callback in list(self._subscribers):
            for capability in sorted(methods):
                callback(f"notifications/{capability}/list_changed")

    def _upstream_notification(self, server: str, message: dict[str, Any]) -> None:
        method = message.get("method", "")
        if not method.endswith("/list_changed"):
            return
        capability = method.split("/")[1]
        kinds = [k for k, kind in KINDS.items() if kind.capability == capability]
        logger.info("upstream %s: %s", server, method)
        published = False
        if self._publish is not None:
            try:
                self._publish("lists", {"server": server, "kinds": kinds})
                published = True
            except DatabaseUnavailable:
                pass  # this process at least; the others refresh every list when their listener is back
        if not published:
            self.on_list_change({"server": server, "kinds": kinds})
        if "tools" in kinds and self._on_tools is not None:
            # Record the new tools now rather than at the next list (only the processes whose
            # client heard the upstream do this; unchanged rows are not written twice).
            self._pool.submit(self._refetch, server, "tools")

    def _refetch(self, server: str, kind: str) -> None:
        with self._lock:
            self._state.lists.pop((server, kind), None)
        self._server_lists(kind, [server])

    # --- lists -----------------------------------------------------------------------------

    def list_page(self, kind: str, cursor: object, view: NamespaceView | None = None) -> dict[str, Any]:
        """One page of the aggregated list of `kind` (tools, prompts, resources, ...)."""
        offset = naming.decode_cursor(cursor)
        items = self.aggregate(kind, view)
        size = self._settings.page_size
        if offset > len(items):
            raise RpcError(INVALID_PARAMS, "Invalid cursor")
        page: dict[str, Any] = {KINDS[kind].key: items[offset : offset + size]}
        if offset + size < len(items):
            page["nextCursor"] = naming.encode_cursor(offset + size)
        return page

    def aggregate(self, kind: str, view: NamespaceView | None = None) -> list[dict[str, Any]]:
        servers = self._names(view)
        lists = self._server_lists(kind, servers)
        if view is not None and kind == "tools":
            return [shown for shown, _, _ in self._namespace_tools(view, servers, lists).values()]
        return [item for name in servers if name in lists for item in lists[name].items]

    def refresh_tools(self, servers: list[str]) -> None:
        """Make sure the tools of these (active) servers were listed lately, which records them."""
        active = self.servers()
        self._server_lists("tools", [name for name in servers if name in active])

    def _names(self, view: NamespaceView | None) -> list[str]:
        """The active servers a downstream session sees, sorted."""
        names = sorted(self.servers())
        return names if view is None else [name for name in names if name in view.servers]

    def _namespace_tools(
        self, view: NamespaceView, servers: list[str], lists: dict[str, ServerList]
    ) -> dict[str, tuple[dict[str, Any], str, str]]:
        """The namespace's active tools by the name its clients use: (tool, server, upstream name).

        Overrides are applied first, so a tool is found by its exposed name only and its
        status is that of the tool the name stands for. Kept until the view or a list changes
        (both are replaced, never modified, so identity tells).
        """
        sources = tuple((server, lists.get(server)) for server in servers)
        cached = self._tables.get(view.id)
        if (cached is not None and cached[0] is view and len(cached[1]) == len(sources)
                and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(cached[1], sources, strict=True))):
            return cached[2]
        table: dict[str, tuple[dict[str, Any], str, str]] = {}
        for server in servers:
            server_list = lists.get(server)
            if server_list is None:
                continue
            for item in server_list.items:
                original = server_list.routes[item["name"]]
                settings = view.settings(server, original)
                if not settings.active:
                    continue
                shown = settings.apply(item, item["name"])
                if shown["name"] in table:
                    logger.warning("namespace %s: two tools named %s; keeping the first", view.name, shown["name"])
                    continue
                table[shown["name"]] = (shown, server, original)
        self._tables[view.id] = (view, sources, table)
        return table

    def _server_lists(self, kind: str, servers: list[str]) -> dict[str, ServerList]:
        now = time.monotonic()
        found: dict[str, ServerList] = {}
        missing = []
        for name in servers:
            cached = self._state.lists.get((name, kind))
            if cached is not None and cached.expires > now:
                found[name] = cached
            elif self._health_of(name).failed_until <= now:
                missing.append(name)
        if missing:
            futures: dict[Future[ServerList | None], str] = {
                self._pool.submit(self._fetch_list, name, kind): name for name in missing
            }
            done, late = wait(futures, timeout=self._settings.list_timeout + 0.5)
            for future in late:
                self._record_failure(futures[future], "list timed out")
            for future in done:
                fetched = future.result()
                if fetched is not None:
                    found[futures[future]] = fetched
        return found

    def _fetch_list(self, name: str, kind: str) -> ServerList | None:
        spec = KINDS[kind]
        try:
            upstream = self.upstream(name)
            info = upstream.server_info
            if info is not None and spec.capability not in (info.get("capabilities") or {}):
                items = []  # it does not offer this kind: nothing to ask
            else:
                items = upstream.list_all(spec.method, spec.key, timeout=self._settings.list_timeout)
        except RpcError as e:
            if e.code != METHOD_NOT_FOUND:
                self._record_failure(name, f"{spec.method} refused ({e.code}: {e.message})")
                return None
            items = []  # an upstream may not declare what it lacks: the same as an empty list
        except UpstreamError as e:
            self._record_failure(name, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - boundary: one upstream must not fail the list
            logger.exception("listing %s of %s failed", kind, name)
            self._record_failure(name, type(e).__name__)
            return None
        self._record_success(name)
        config = (self._state.configs or {}).get(name)
        if kind == "tools" and self._on_tools is not None and config is not None:
            try:
                self._on_tools(config.id, items)
            except DatabaseUnavailable:
                pass  # recorded at a later list, once the database is back (the outage is logged)
            except Exception:  # noqa: BLE001 - recording is bookkeeping: the list is served anyway
                logger.exception("recording the tools of %s failed", name)
        server_list = self._expose(name, kind, items)
        with self._lock:
            if name in (self._state.configs or {}):
                self._state.lists[(name, kind)] = server_list
        return server_list

    def _expose(self, server: str, kind: str, items: list[dict[str, Any]]) -> ServerList:
        spec = KINDS[kind]
        exposed_items, routes = [], {}
        for item in items:
            if spec.named:
                original = item.get("name")
                if not isinstance(original, str):
                    continue
                exposed = naming.expose(server, original)
                if exposed in routes:
                    logger.warning("%s: two %s map to %s; keeping the first", server, kind, exposed)
                    continue
                routes[exposed] = original
                exposed_items.append({**item, "name": exposed})
            else:
                uri = item.get("uri") or item.get("uriTemplate")
                if isinstance(uri, str):
                    routes[uri] = uri
                exposed_items.append(item)
        return ServerList(exposed_items, routes, time.monotonic() + self._settings.list_cache_ttl)

    def _drop_lists(self, server: str) -> None:
        for key in [k for k in self._state.lists if k[0] == server]:
            del self._state.lists[key]

    # --- routing and forwarding ------------------------------------------------------------

    def route(self, kind: str, exposed: str, view: NamespaceView | None = None) -> tuple[str, str]:
        """(server, upstream name) of an exposed tool or prompt name; -32602 when unknown."""
        servers = self._names(view)
        namespaced = view is not None and kind == "tools"

        def lookup() -> tuple[str, str] | None:
            assert view is not None
            found = self._namespace_tools(view, servers, self._server_lists(kind, servers)).get(exposed)
            return None if found is None else (found[1], found[2])

        if namespaced and (found := lookup()) is not None:
            return found
        for server in naming.server_candidates(exposed, servers):
            for attempt in range(2):
                if attempt:  # not in a cached list: the upstream may have added it since
                    with self._lock:
                        self._state.lists.pop((server, kind), None)
                server_list = self._server_lists(kind, [server]).get(server)
                if server_list is None:  # its failure was logged (and kept for admins) when it happened
                    raise client_error(server)
                if namespaced:
                    if attempt and (found := lookup()) is not None:
                        return found
                elif exposed in server_list.routes:
                    return server, server_list.routes[exposed]
        label = "tool" if kind == "tools" else "prompt"
        raise RpcError(INVALID_PARAMS, f"Unknown {label}: {exposed}")

    def route_resource(self, uri: str, view: NamespaceView | None = None) -> str:
        """The server that listed `uri`, or whose template matches it; -32602 when none."""
        servers = self._names(view)
        lists = self._server_lists("resources", servers)
        for server in servers:
            if server in lists and uri in lists[server].routes:
                return server
        templates = self._server_lists("resourceTemplates", servers)
        for server in servers:
            if server in templates and any(
                _template_matches(t, uri) for t in templates[server].routes
            ):
                return server
        raise RpcError(INVALID_PARAMS, f"Unknown resource: {uri}")

    def call(self, server: str, method: str, params: dict[str, Any]) -> PendingCall:
        """A client's call: its failure is recorded and logged, the client gets client_error."""
        try:
            call = self.upstream(server).call(method, params)
        except UpstreamError as e:
            self._record_failure(server, str(e))
            raise client_error(server, e) from None
        return call

    def request(self, server: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A client's request (RpcError: the upstream's answer); failures as in call()."""
        try:
            result = self.upstream(server).request(method, params)
        except UpstreamError as e:
            self._record_failure(server, str(e))
            raise client_error(server, e) from None
        self._record_success(server)
        return result

    # --- health ----------------------------------------------------------------------------

    def _health_of(self, name: str) -> UpstreamHealth:
        return self._health.setdefault(name, UpstreamHealth())

    def _record_success(self, name: str) -> None:
        health = self._health_of(name)
        health.status, health.last_error, health.checked_at = "ok", None, time.time()
        health.failed_until = 0.0

    def _record_failure(self, name: str, error: str) -> None:
        logger.warning("upstream %s skipped: %s", name, error)
        health = self._health_of(name)
        health.status, health.last_error, health.checked_at = "error", error, time.time()
        health.failed_until = time.monotonic() + RETRY_FAILED_AFTER

    def health(self) -> list[dict[str, Any]]:
        """Each active upstream's last known state in this process. Nothing is pinged or
        started here: an upstream this process never used is `unknown`."""
        report = []
        for name, config in sorted(self.servers().items()):
            health = self._health.get(name) or UpstreamHealth()
            entry: dict[str, Any] = {
                "name": name,
                "transport": config.transport,
                "status": health.status,
                "last_error": health.last_error,
                "checked_at": health.checked_at,
            }
            process = self.process_state(name)
            if process is not None:
                entry["process"] = process
            report.append(entry)
        return report

    def process_state(self, name: str) -> dict[str, Any] | None:
        """A stdio server's child in this process: running, pid, restarts, last error."""
        client = self.kept(name)
        return client.state() if client is not None else None


def _template_matches(template: str, uri: str) -> bool:
    """RFC 6570 level-1 match: each {var} stands for one or more characters but '/'."""
    pattern = "".join(
        "[^/]+" if part.startswith("{") else re.escape(part)
        for part in re.split(r"(\{[^}]*\})", template)
        if part
    )
    return re.fullmatch(pattern, uri) is not None
