"""The official MCP Python SDK as a test client of the gateway (sync wrappers over anyio)."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

T = TypeVar("T")


def run_client(url: str, api_key: str | None, body: Callable[[Client], Awaitable[T]], *,
               mode: str = "legacy", sse: bool = False, **client_options: Any) -> T:
    """Connect to `url` with `api_key` (None: no credential), run `body(client)`, disconnect;
    returns body's value. `sse`: the legacy HTTP+SSE transport instead of Streamable HTTP."""
    headers = {} if api_key is None else {"X-API-Key": api_key}

    async def main() -> T:
        if sse:
            async with Client(sse_client(url, headers=headers), mode="legacy", **client_options) as client:
                return await body(client)
        async with create_mcp_http_client(headers=headers) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode,
                              **client_options) as client:
                return await body(client)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK deprecates logging/setLevel
        return anyio.run(main)


async def list_all(client: Client, what: str) -> list[Any]:
    """Every item of a paginated list ("tools", "prompts", "resources", "resource_templates")."""
    method = getattr(client, f"list_{what}")
    items: list[Any] = []
    cursor = None
    for _ in range(100):
        page = await method(cursor=cursor)
        items += getattr(page, what)
        cursor = page.next_cursor
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def notifications_until(lines: Iterator[str], method: str, seconds: float = 10) -> list[str]:
    """Methods of the notifications read from an SSE stream until `method` (or the deadline)."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    for line in lines:  # keep-alives every 0.5 s keep this loop moving to its deadline
        if line.startswith("data:"):
            seen.append(json.loads(line[5:])["method"])
        if method in seen or time.monotonic() > deadline:
            break
    return seen
