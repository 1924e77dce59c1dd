"""Roles through a live gunicorn (2 workers) and a real upstream: a client key uses MCP with the
official SDK and is refused by every admin route the live /openapi.json lists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from mcp import Client

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .mcp_client import list_all, run_client
from .test_roles import admin_routes
from .upstreams import UpstreamProcess

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = "application/json, text/event-stream"


class Deployment:
    def __init__(self, gateway: Gunicorn, keys: dict[str, str]) -> None:
        self.gateway = gateway
        self.keys = keys

    def rest(self, method: str, path: str, key: str = "admin", **kwargs: Any) -> requests.Response:
        return requests.request(method, self.gateway.url + path, headers={"X-API-Key": self.keys[key]},
                                timeout=30, **kwargs)


@pytest.fixture(scope="module")
def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    keys = fresh_keys(database_url, admin="admin", client="client", scoped="client")
    upstream = UpstreamProcess(name="alpha")
    gateway = Gunicorn(child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                                 METAMCP_WORKERS="2", METAMCP_UPSTREAM_TIMEOUT="10"), free_port())
    try:
        upstream.start()
        gateway.wait_ready()
        d = Deployment(gateway, keys)
        server = d.rest("POST", "/api/v1/mcp/servers",
                        json={"name": "alpha", "transport": "streamable_http", "url": upstream.url})
        assert server.status_code == 201, server.text
        namespace = d.rest("POST", "/api/v1/namespaces", json={"name": "research"})
        assert namespace.status_code == 201, namespace.text
        ns_id = namespace.json()["id"]
        assert d.rest("PUT", f"/api/v1/namespaces/{ns_id}/servers/{server.json()['id']}",
                      json={"status": "active"}).status_code == 200
        assert d.rest("POST", "/api/v1/endpoints", json={"name": "research", "namespace_id": ns_id}).status_code == 201
        assert d.rest("PATCH", "/api/v1/keys/3", json={"namespaces": ["research"]}).json()["role"] == "client"
        yield d
    finally:
        gateway.stop()
        upstream.stop()


def sdk_echo(url: str, credential: str) -> tuple[list[str], str]:
    async def body(client: Client) -> tuple[list[str], str]:
        tools = [t.name for t in await list_all(client, "tools")]
        result = await client.call_tool("alpha__echo", {"message": "hi"})
        return tools, result.content[0].text

    return run_client(url, credential, body)


def test_a_client_key_works_on_mcp_with_the_sdk(deployment: Deployment) -> None:
    url = deployment.gateway.url
    tools, text = sdk_echo(url + "/mcp", deployment.keys["client"])
    assert "alpha__echo" in tools and text == "alpha: hi"
    # The token exchange works for a client key, and its JWT (role client) does the same.
    reply = requests.post(url + "/api/v1/auth/token", json={"api_key": deployment.keys["client"]}, timeout=30)
    assert reply.status_code == 200
    assert sdk_echo(url + "/mcp", reply.json()["access_token"])[1] == "alpha: hi"
    # An unscoped client key reaches every endpoint; a scoped one only its namespaces' endpoints.
    assert sdk_echo(url + "/metamcp/research/mcp", deployment.keys["client"])[1] == "alpha: hi"
    assert sdk_echo(url + "/metamcp/research/mcp", deployment.keys["scoped"])[1] == "alpha: hi"
    reply = requests.post(url + "/mcp", json=INIT, headers={"X-API-Key": deployment.keys["scoped"], "Accept": ACCEPT},
                          timeout=30)
    assert reply.status_code == 403 and reply.json()["error"]["code"] == -32600
    # Admin keys use MCP too.
    assert sdk_echo(url + "/mcp", deployment.keys["admin"])[1] == "alpha: hi"


def test_a_client_key_gets_403_on_every_admin_route_of_the_live_document(deployment: Deployment) -> None:
    spec = requests.get(deployment.gateway.url + "/openapi.json", timeout=30).json()
    routes = list(admin_routes(spec))
    assert len(routes) >= 25
    refused = 0
    for method, path in routes:
        for key in ("client", "scoped"):
            body = {"json": {}} if method in ("post", "put", "patch") else {}
            reply = deployment.rest(method.upper(), path, key=key, **body)
            assert reply.status_code == 403, (key, method, path, reply.status_code, reply.text)
            assert reply.json()["error"] == "forbidden" and "admin key" in reply.json()["message"]
            refused += 1
    assert refused == 2 * len(routes)


def test_a_client_key_cannot_create_a_stdio_server(deployment: Deployment) -> None:
    body = {"name": "pwn", "transport": "stdio", "command": "/bin/sh", "args": ["-c", "id"]}
    reply = deployment.rest("POST", "/api/v1/mcp/servers", key="client", json=body)
    assert reply.status_code == 403 and reply.json()["error"] == "forbidden"
    reply = deployment.rest("POST", "/api/v1/mcp/servers/import", key="client",
                            json={"mcpServers": {"pwn": {"command": "/bin/sh", "args": ["-c", "id"]}}})
    assert reply.status_code == 403
    names = [s["name"] for s in deployment.rest("GET", "/api/v1/mcp/servers").json()["servers"]]
    assert names == ["alpha"]
