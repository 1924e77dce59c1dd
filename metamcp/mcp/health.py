"""Health of each upstream as this process saw it: its last success or failure, and when to retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metamcp import metrics
from metamcp.mcp.upstream.interface import Upstream
from metamcp.servers import ServerConfig, Unreadable

logger = logging.getLogger(__name__)

#: Seconds a failed upstream is left out of list fan-outs before it is tried again.
RETRY_FAILED_AFTER = 5.0


@dataclass
class UpstreamHealth:
    status: str = "unknown"  # ok | error | unknown
    last_error: str | None = None
    checked_at: float | None = None
    failed_until: float = 0.0


class Health:
    """What this process knows of each upstream (other workers may know differently)."""

    def __init__(self) -> None:
        self._upstreams: dict[str, UpstreamHealth] = {}

    def of(self, name: str) -> UpstreamHealth:
        return self._upstreams.setdefault(name, UpstreamHealth())

    def failing(self, name: str, now: float) -> bool:
        """Failed less than RETRY_FAILED_AFTER ago (at monotonic `now`): left out of fan-outs."""
        return self.of(name).failed_until > now

    def record_success(self, name: str) -> None:
        health = self.of(name)
        health.status, health.last_error, health.checked_at = "ok", None, time.time()
        health.failed_until = 0.0
        metrics.upstream_succeeded(name)

    def record_failure(self, name: str, error: str) -> None:
        logger.warning("upstream %s skipped: %s", name, error)
        health = self.of(name)
        health.status, health.last_error, health.checked_at = "error", error, time.time()
        health.failed_until = time.monotonic() + RETRY_FAILED_AFTER
        metrics.upstream_failed(name)

    def report(self, servers: dict[str, ServerConfig],
               kept: Callable[[str], Upstream | None],
               unreadable: Mapping[str, Unreadable] | None = None) -> list[dict[str, Any]]:
        """Each active upstream's last known state in this process; `kept` gives the pool's
        client of a server, if it has one. Nothing is pinged or started here: an upstream this
        process never used is `unknown`. An `unreadable` server (its secrets sealed under
        another ENCRYPTION_KEY) is an error, named with its cause, not left out."""
        report: list[dict[str, Any]] = [
            {"name": problem.name, "transport": problem.transport, "status": "error",
             "last_error": problem.message, "checked_at": None}
            for problem in (unreadable or {}).values()]
        for name, config in sorted(servers.items()):
            health = self._upstreams.get(name) or UpstreamHealth()
            entry: dict[str, Any] = {
                "name": name,
                "transport": config.transport,
                "status": health.status,
                "last_error": health.last_error,
                "checked_at": health.checked_at,
            }
            client = kept(name)
            process = client.state() if client is not None else None
            if process is not None:
                entry["process"] = process
            report.append(entry)
        return sorted(report, key=lambda entry: entry["name"])

