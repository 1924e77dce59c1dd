"""The MCP side of one process put together: health, pool, catalog and router, wired."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

from metamcp.config import Settings
from metamcp.mcp.catalog import Catalog
from metamcp.mcp.health import Health
from metamcp.mcp.pool import Pool, client_error
from metamcp.mcp.router import Router
from metamcp.mcp.upstream import PendingCall
from metamcp.namespaces import NamespaceView
from metamcp.servers import ServerRegistry

__all__ = ["Gateway", "client_error"]  # client_error: until the dispatcher imports it from pool


class Gateway:
    """One per process. The parts are public; the methods below only delegate, for the modules
    not yet calling the parts."""

    def __init__(
        self,
        registry: ServerRegistry,
        settings: Settings,
        publish: Callable[[str, dict[str, Any]], None] | None = None,
        on_tools: Callable[[UUID, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="metamcp-fanout")
        self.health = Health()
        self.pool = Pool(registry, settings, self.health, self._executor)
        self.catalog = Catalog(self.pool, self.health, settings, self._executor, publish, on_tools)
        self.router = Router(self.catalog)
        self.pool.on_notification = self.catalog.on_notification
        self.pool.on_drop = self.catalog.drop_lists

    def close(self) -> None:
        self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def on_registry_change(self, message: dict[str, Any]) -> None:
        self.catalog.on_registry_change(message)

    def on_namespace_change(self, message: dict[str, Any]) -> None:
        self.catalog.on_namespace_change(message)

    def on_list_change(self, message: dict[str, Any]) -> None:
        self.catalog.on_list_change(message)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self.catalog.subscribe(callback)

    def unsubscribe(self, callback: Callable[[str], None]) -> None:
        self.catalog.unsubscribe(callback)

    def list_page(self, kind: str, cursor: object, view: NamespaceView | None = None) -> dict[str, Any]:
        return self.catalog.list_page(kind, cursor, view)

    def route(self, kind: str, exposed: str, view: NamespaceView | None = None) -> tuple[str, str]:
        route = self.router.route(kind, exposed, view)
        return route.server, route.name

    def route_resource(self, uri: str, view: NamespaceView | None = None) -> str:
        return self.router.route_resource(uri, view)

    def call(self, server: str, method: str, params: dict[str, Any]) -> PendingCall:
        return self.pool.call(server, method, params)

    def request(self, server: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.pool.request(server, method, params)
