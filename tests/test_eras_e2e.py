"""Issue 12, "Done when" #2: both protocol eras on the same URLs, to every kind of upstream. The
official SDK client in `auto` mode negotiates 2026-07-28 and in `legacy` mode 2025-11-25,
through `/mcp` and through an endpoint, against one live gunicorn (2 workers) in front of a
2025-only HTTP upstream (`old`: upstream_server.py --legacy-only), a dual-era HTTP upstream
(`dual`: the SDK server as it is) and a stdio upstream (`kid`); each client calls tools on each
and answers elicitations from each.

Needs the whole of issue 12 to pass. Before it merges: the `auto` cases fail on the negotiated
version (the gateway does not answer `server/discover`), and the module's setup fails if
upstream_server.py has no `--legacy-only` yet.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from mcp import Client, types

from metamcp.mcp.protocol import MODERN_VERSION, SUPPORTED_VERSIONS

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .mcp_client import list_all, run_client
from .upstreams import SERVER, UpstreamProcess, start_all

#: The era each client mode must negotiate with the gateway.
MODES = {"auto": MODERN_VERSION, "legacy": "2025-11-25"}
PATHS = ("/mcp", "/metamcp/eras/mcp")
SERVERS = ("old", "dual", "kid")


class Gateway:
    def __init__(self, server: Gunicorn, key: str) -> None:
        self.server, self.key = server, key

    def client(self, path: str, mode: str, body: Any, **options: Any) -> Any:
        return run_client(self.server.url + path, self.key, body, mode=mode, **options)


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    key = fresh_keys(database_url, eras="admin")["eras"]
    upstreams = [UpstreamProcess("old", extra_args=("--legacy-only",)), UpstreamProcess("dual")]
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="2", METAMCP_UPSTREAM_TIMEOUT="10", METAMCP_KEEPALIVE_SECONDS="0.5")
    server = Gunicorn(env, free_port())
    try:
        start_all(upstreams)
        server.wait_ready()

        def rest(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = requests.request(method, f"{server.url}/api/v1{path}", json=body,
                                     headers={"X-API-Key": key}, timeout=30)
            assert reply.status_code in (200, 201), reply.text
            return dict(reply.json())

        configs = [{"name": u.name, "transport": "streamable_http", "url": u.url} for u in upstreams]
        configs.append({"name": "kid", "transport": "stdio", "command": sys.executable,
                        "args": [str(SERVER), "--transport", "stdio", "--name", "kid"]})
        namespace = rest("POST", "/namespaces", {"name": "eras"})["id"]
        for config in configs:
            server_id = rest("POST", "/mcp/servers", config)["id"]
            rest("PUT", f"/namespaces/{namespace}/servers/{server_id}", {"status": "active"})
        rest("POST", "/endpoints", {"name": "eras", "namespace_id": namespace, "auth": {"api_key": True}})
        yield Gateway(server, key)
    finally:
        server.stop()
        for upstream in upstreams:
            upstream.stop()


def text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_negotiates_its_era_on_the_same_url(gateway: Gateway, mode: str, path: str) -> None:
    """`auto` probes server/discover and adopts 2026-07-28 (the discover result offers both eras);
    `legacy` runs the initialize handshake and gets 2025-11-25, on the same URL."""

    async def body(client: Client) -> tuple[str, Any, Any]:
        return client.protocol_version, client.session.discover_result, client.session.initialize_result

    version, discovered, initialized = gateway.client(path, mode, body)
    assert version == MODES[mode]
    if mode == "auto":
        assert discovered is not None and initialized is None
        assert MODERN_VERSION in discovered.supported_versions
        assert set(SUPPORTED_VERSIONS) <= set(discovered.supported_versions)
    else:
        assert initialized is not None and discovered is None


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_tools_are_listed_and_called_on_every_kind_of_upstream(gateway: Gateway, mode: str, path: str,
                                                               server: str) -> None:
    """In its era, the client lists the upstream's tools and calls two of them; the answers
    are the upstream's."""

    async def body(client: Client) -> tuple[str, set[str], str, str]:
        names = {tool.name for tool in await list_all(client, "tools")}
        echoed = await client.call_tool(f"{server}__echo", {"message": f"{mode} via {path}"})
        added = await client.call_tool(f"{server}__add", {"a": 2, "b": 3})
        return client.protocol_version, names, text(echoed), text(added)

    version, names, echoed, added = gateway.client(path, mode, body)
    assert version == MODES[mode]
    assert {f"{server}__echo", f"{server}__add", f"{server}__ask_user"} <= names
    assert echoed == f"{server}: {mode} via {path}"
    assert added == "5"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
def test_elicitation_reaches_the_client_of_either_era(gateway: Gateway, mode: str, path: str,
                                                      server: str) -> None:
    """The upstream's question reaches the client's elicitation_callback once and its answer
    reaches the tool, whatever the two sides speak: a 2026 client through `input_required`
    (from the 2025-only upstream's elicitation/create: a parked call; from a 2026 upstream:
    passed through), a 2025 client through a request on the call's stream (from a 2026
    upstream's `input_required`: converted)."""
    asked: list[str] = []

    async def elicit(_context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": f"Grace ({mode})"})

    async def body(client: Client) -> tuple[str, str]:
        result = await client.call_tool(f"{server}__ask_user", {"question": f"Who asks {server}?"})
        return client.protocol_version, text(result)

    version, answer = gateway.client(path, mode, body, elicitation_callback=elicit)
    assert version == MODES[mode]
    assert asked == [f"Who asks {server}?"]
    assert f"Grace ({mode})" in answer


@pytest.mark.parametrize("server", ("old", "dual"))
@pytest.mark.parametrize("mode", MODES)
def test_an_http_upstream_hears_the_clients_era_when_it_speaks_it(gateway: Gateway, mode: str,
                                                                  server: str) -> None:
    """The headers the upstream's call arrived with: the dual-era upstream is spoken to in the
    client's era (a 2026 client's call statelessly, a 2025 client's on an upstream session);
    the 2025-only upstream always on a session, in a 2025 revision."""

    async def body(client: Client) -> dict[str, str]:
        return dict(json.loads(text(await client.call_tool(f"{server}__headers", {}))))

    seen = gateway.client(PATHS[1], mode, body)
    version = seen.get("mcp-protocol-version")
    if server == "dual" and mode == "auto":
        assert version == MODERN_VERSION and "mcp-session-id" not in seen, seen
    else:
        assert version in SUPPORTED_VERSIONS and seen.get("mcp-session-id"), seen
