"""What 2026-07-28 adds to the gateway's answers: every result says it is complete (or that it
needs input) and names the server that gave it."""

from __future__ import annotations

from typing import Any

from metamcp.config import package_version
from metamcp.mcp.protocol import META_SERVER_INFO

SERVER_INFO = {"name": "metamcp", "title": "MetaMCP"}


def server_info() -> dict[str, str]:
    return {**SERVER_INFO, "version": package_version()}


def complete(result: dict[str, Any]) -> dict[str, Any]:
    """`result` as a 2026-07-28 client gets it: `resultType` (kept when the upstream set it, e.g.
    `input_required`, else `complete`) and the gateway's serverInfo in `_meta`."""
    meta = result.get("_meta")
    meta = {**meta, META_SERVER_INFO: server_info()} if isinstance(meta, dict) else {META_SERVER_INFO: server_info()}
    return {**result, "resultType": result.get("resultType", "complete"), "_meta": meta}
