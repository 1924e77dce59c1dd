"""The MCP side of one process put together: health, pool, catalog and router, wired."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

from metamcp.config import Settings
from metamcp.mcp.catalog import Catalog
from metamcp.mcp.health import Health
from metamcp.mcp.pool import Pool
from metamcp.mcp.router import Router
from metamcp.notify import Topic
from metamcp.servers import ServerRegistry


class Gateway:
    """One per process: the dispatcher and the views use the parts (health, pool, catalog,
    router) directly; this only builds them and connects their hooks."""

    def __init__(
        self,
        registry: ServerRegistry,
        settings: Settings,
        publish: Callable[[Topic, dict[str, Any]], None] | None = None,
        record: Callable[[str, UUID, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="metamcp-fanout")
        self.health = Health()
        self.pool = Pool(registry, settings, self.health, self._executor)
        self.catalog = Catalog(self.pool, self.health, settings, self._executor, publish, record)
        self.router = Router(self.catalog)
        self.pool.on_notification = self.catalog.on_notification
        self.pool.on_drop = self.catalog.drop_lists

    def close(self) -> None:
        self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
