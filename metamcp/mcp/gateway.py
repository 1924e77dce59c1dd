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
        #: The bounded pool lists are fanned out on (and other short upstream work).
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="metamcp-fanout")
        self.health = Health()
        self.pool = Pool(registry, settings, self.health, self.executor)
        self.catalog = Catalog(self.pool, self.health, settings, self.executor, publish, record)
        self.router = Router(self.catalog)
        self.pool.on_notification = self._heard
        self.pool.on_drop = self._dropped
        self._hearers: list[tuple[Callable[[str, dict[str, Any]], None], Callable[[str], None]]] = []

    def hear(self, on_notification: Callable[[str, dict[str, Any]], None],
             on_drop: Callable[[str], None]) -> None:
        """Also tell these what the kept clients hear, and whose client the pool dropped."""
        self._hearers.append((on_notification, on_drop))

    def _heard(self, server: str, message: dict[str, Any]) -> None:
        self.catalog.on_notification(server, message)
        for on_notification, _ in self._hearers:
            on_notification(server, message)

    def _dropped(self, server: str) -> None:
        self.catalog.drop_lists(server)
        for _, on_drop in self._hearers:
            on_drop(server)

    def close(self, wait: float = 10.0) -> None:
        self.pool.close(wait)
        self.executor.shutdown(wait=False, cancel_futures=True)
