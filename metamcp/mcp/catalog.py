"""The aggregated lists: each upstream's lists cached and fanned out, named, and kept per namespace.

Lists are cached (refreshed on list_changed, on registry change and after a TTL) and fanned out
on a bounded pool, so one slow or dead upstream costs at most its timeout and never fails the
aggregate. Each name or URI is listed once, and routed to, the first server listing it (in a
namespace's order, else by server name); such clashes are logged once and shown to admins.
Downstream sessions' streams subscribe here to hear that a list changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, wait
from typing import Any
from uuid import UUID

from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import naming
from metamcp.mcp.health import Health
from metamcp.mcp.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from metamcp.mcp.pool import Pool
from metamcp.mcp.tables import (
    KIND_LABELS,
    KINDS,
    RECORDED,
    ExposedItem,
    ServerList,
    Table,
    namespace_items,
    unique_items,
)
from metamcp.mcp.upstream.call import UpstreamError
from metamcp.namespaces import NamespaceView
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

#: Seconds announcements of changed lists are gathered before they go out, so the copies of one
#: change (heard by several processes' upstream clients, or under several topics) go out once.
ANNOUNCE_DELAY = 0.5


class Catalog:
    """The lists of every active server (view None) or of one namespace (a NamespaceView)."""

    def __init__(
        self,
        pool: Pool,
        health: Health,
        settings: Settings,
        executor: Executor,
        publish: Callable[[Topic, dict[str, Any]], None] | None = None,
        record: Callable[[str, UUID, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._health = health
        self._settings = settings
        #: The bounded pool lists are fanned out on.
        self._executor = executor
        #: Announces an upstream's list_changed to every process (LISTEN/NOTIFY).
        self._publish = publish
        #: Receives each fresh list of tools or prompts of a server (kind, server id, items):
        #: the tools and prompts tables are kept from them.
        self._record = record
        self._lists: dict[tuple[str, str], ServerList] = {}  # (server, kind) -> its list
        #: What each namespace (None: /mcp without one) sees of each kind.
        self._tables: dict[tuple[UUID | None, str], Table] = {}
        self._subscribers: list[Callable[[str], None]] = []
        #: Capabilities whose list_changed goes out at the end of the current gathering.
        self._pending: set[str] = set()
        self._lock = threading.RLock()

    # --- lists -------------------------------------------------------------------------------

    def list_page(self, kind: str, cursor: object, view: NamespaceView | None = None) -> dict[str, Any]:
        """One page of the aggregated list of `kind` (tools, prompts, resources, ...)."""
        return self.served_page(kind, cursor, view)[0]

    def served_page(self, kind: str, cursor: object,
                    view: NamespaceView | None = None) -> tuple[dict[str, Any], float]:
        """A page as list_page() gives it, and the seconds the lists it was made from stay
        fresh here (a 2026-07-28 client's `ttlMs`): the soonest expiry among them, 0 when a
        server's list is missing (failing: the page may change as soon as it is back)."""
        offset = naming.decode_cursor(cursor)
        table = self.table(kind, view)
        if any(source is None for source in table.lists):
            fresh = 0.0
        else:
            now = time.monotonic()
            fresh = min((source.expires - now for source in table.lists if source is not None),
                        default=float(self._settings.list_cache_ttl))
        size = self._settings.page_size
        if offset > len(table.items):
            raise RpcError(INVALID_PARAMS, "Invalid cursor")
        page: dict[str, Any] = {KINDS[kind].key: table.items[offset : offset + size]}
        if offset + size < len(table.items):
            page["nextCursor"] = naming.encode_cursor(offset + size)
        return page, max(0.0, fresh)

    def ttl_ms(self) -> int:
        """How long a list fetched now stays fresh here, in milliseconds: the longest `ttlMs`
        the gateway gives (server/discover's, whose answer changes no sooner)."""
        return int(self._settings.list_cache_ttl * 1000)

    def aggregate(self, kind: str, view: NamespaceView | None = None) -> list[dict[str, Any]]:
        """The list of `kind` a session sees (view None: every active server's), each name or
        URI once."""
        return self.table(kind, view).items

    def conflicts(self, view: NamespaceView | None) -> list[dict[str, Any]]:
        """Names and URIs that several servers list (the first keeps them), as the admin API shows them."""
        return [clash.public() for kind in KINDS for clash in self.table(kind, view).clashes]

    def refresh(self, servers: list[str]) -> None:
        """Make sure the tools and prompts of these (active) servers were listed lately, which
        records them."""
        active = self._pool.servers()
        for kind in ("tools", "prompts"):
            self.lists(kind, [name for name in servers if name in active])

    def names(self, view: NamespaceView | None) -> list[str]:
        """The active servers a downstream session sees: a namespace's in its order, else all
        by name."""
        active = self._pool.servers()
        return sorted(active) if view is None else [name for name in view.servers if name in active]

    def unreadable(self, view: NamespaceView | None) -> dict[str, str]:
        """The active servers a session would see but the gateway cannot use (this
        ENCRYPTION_KEY cannot open their secrets): name -> the reason, for its errors."""
        problems = self._pool.unreadable()
        names = sorted(problems) if view is None else [name for name in view.servers if name in problems]
        return {name: problems[name].message for name in names}

    def table(self, kind: str, view: NamespaceView | None) -> Table:
        """What a session sees of `kind` from the current lists, kept until the view or a list
        changes; a clash is logged once, when it appears."""
        servers = self.names(view)
        lists = self.lists(kind, servers)
        sources = [lists.get(server) for server in servers]
        key = (None if view is None else view.id, kind)
        cached = self._tables.get(key)
        if cached is not None and cached.made_from(view, servers, sources):
            return cached
        routes: dict[str, ExposedItem] = {}
        if view is not None and KINDS[kind].named:
            routes, clashes = namespace_items(kind, view, servers, sources)
            items = [exposed.item for exposed in routes.values()]
        else:
            items, clashes = unique_items(kind, servers, sources)
        table = Table(view, servers, sources, items, routes, clashes)
        with self._lock:  # two requests making the same table log its new clashes once
            cached = self._tables.get(key)
            self._tables[key] = table
        where = "/mcp" if view is None else f"namespace {view.name}"
        for clash in set(clashes) - set(cached.clashes if cached is not None else []):
            logger.warning("%s: servers %s all list the %s %s; %s serves it", where, ", ".join(clash.servers),
                           KIND_LABELS[kind], clash.key, clash.servers[0])
        return table

    def lists(self, kind: str, servers: list[str]) -> dict[str, ServerList]:
        """These servers' lists of `kind`, cached or fetched in parallel; a server that failed
        lately, or fails now, is left out."""
        now = time.monotonic()
        found: dict[str, ServerList] = {}
        missing = []
        for name in servers:
            cached = self._lists.get((name, kind))
            if cached is not None and cached.expires > now:
                found[name] = cached
            elif not self._health.failing(name, now):
                missing.append(name)
        if missing:
            futures: dict[Future[ServerList | None], str] = {
                self._executor.submit(self._fetch_list, name, kind): name for name in missing
            }
            done, late = wait(futures, timeout=self._settings.list_timeout + 0.5)
            for future in late:
                self._health.record_failure(futures[future], "list timed out")
            for future in done:
                fetched = future.result()
                if fetched is not None:
                    found[futures[future]] = fetched
        return found

    def forget(self, kind: str, servers: list[str]) -> None:
        """Drop these servers' cached lists of `kind`: the next use fetches them."""
        with self._lock:
            for server in servers:
                self._lists.pop((server, kind), None)

    def drop_lists(self, server: str) -> None:
        """Drop every cached list of `server` (its client was dropped)."""
        with self._lock:
            for key in [k for k in self._lists if k[0] == server]:
                del self._lists[key]

    def _fetch_list(self, name: str, kind: str) -> ServerList | None:
        spec = KINDS[kind]
        try:
            upstream = self._pool.client(name)
            info = upstream.server_info
            if info is not None and spec.capability not in (info.get("capabilities") or {}):
                items = []  # it does not offer this kind: nothing to ask
            else:
                items = upstream.list_all(spec.method, spec.key, timeout=self._settings.list_timeout)
        except RpcError as e:  # the upstream's answer, or the server was removed meanwhile
            if e.code != METHOD_NOT_FOUND:
                self._health.record_failure(name, f"{spec.method} refused ({e.code}: {e.message})")
                return None
            items = []  # an upstream may not declare what it lacks: the same as an empty list
        except UpstreamError as e:
            self._health.record_failure(name, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - boundary: one upstream must not fail the list
            logger.exception("listing %s of %s failed", kind, name)
            self._health.record_failure(name, type(e).__name__)
            return None
        self._health.record_success(name)
        config = self._pool.config(name)
        if kind in RECORDED and self._record is not None and config is not None:
            try:
                self._record(kind, config.id, items)
            except DatabaseUnavailable:
                pass  # recorded at a later list, once the database is back (the outage is logged)
            except Exception:  # noqa: BLE001 - recording is bookkeeping: the list is served anyway
                logger.exception("recording the %s of %s failed", kind, name)
        server_list = self._expose(name, kind, items)
        with self._lock:
            if self._pool.config(name) is not None:
                self._lists[(name, kind)] = server_list
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

    # --- changes -----------------------------------------------------------------------------

    def on_registry_change(self, message: dict[str, Any]) -> None:
        self._pool.registry_changed()
        if not message.get("resync"):  # a resync announces once, in on_list_change
            self.announce(*KINDS)

    def on_namespace_change(self, message: dict[str, Any]) -> None:
        if not message.get("resync"):
            self.announce(*KINDS)  # a server or tool came or went in some namespace

    def on_list_change(self, message: dict[str, Any]) -> None:
        server, kinds = message.get("server"), message.get("kinds") or list(KINDS)
        with self._lock:
            if not isinstance(server, str):  # the listener reconnected: anything may have changed
                self._lists.clear()
            else:
                for kind in kinds:
                    self._lists.pop((server, kind), None)
        self.announce(*kinds)

    def on_notification(self, server: str, message: dict[str, Any]) -> None:
        """A kept client heard its upstream: a list_changed is told to every process."""
        method = message.get("method", "")
        if not method.endswith("/list_changed"):
            return
        capability = method.split("/")[1]
        kinds = [k for k, kind in KINDS.items() if kind.capability == capability]
        logger.info("upstream %s: %s", server, method)
        published = False
        if self._publish is not None:
            try:
                self._publish(Topic.LISTS, {"server": server, "kinds": kinds})
                published = True
            except DatabaseUnavailable:
                pass  # this process at least; the others refresh every list when their listener is back
        if not published:
            self.on_list_change({"server": server, "kinds": kinds})
        for kind in RECORDED.intersection(kinds) if self._record is not None else ():
            # Record the new tools or prompts now rather than at the next list (only the processes
            # whose client heard the upstream do this; unchanged rows are not written twice).
            self._executor.submit(self._refetch, server, kind)

    def _refetch(self, server: str, kind: str) -> None:
        self.forget(kind, [server])
        self.lists(kind, [server])

    # --- list_changed subscribers (the GET streams of downstream sessions) ---------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def announce(self, *kinds: str) -> None:
        """Tell every subscriber that the lists of these kinds changed, ANNOUNCE_DELAY from
        now, together with whatever else changes meanwhile."""
        with self._lock:
            first = not self._pending
            self._pending |= {KINDS[k].capability for k in kinds if k in KINDS}
            if not first or not self._pending:
                return
        timer = threading.Timer(ANNOUNCE_DELAY, self._announce_pending)
        timer.daemon = True
        timer.start()

    def _announce_pending(self) -> None:
        with self._lock:
            capabilities, self._pending = sorted(self._pending), set()
            callbacks = list(self._subscribers)
        for callback in callbacks:
            for capability in capabilities:
                callback(f"notifications/{capability}/list_changed")
