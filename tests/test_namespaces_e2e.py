"""Namespaces, tool overrides, endpoints and key scopes end to end: live gunicorn (2 workers),
real SDK upstreams, the SDK as client over Streamable HTTP and legacy SSE, plain REST."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp import Client
from mcp.shared.exceptions import MCPError

from metamcp import crypto, repository
from metamcp.db import Database

from .conftest import ROOT, Gunicorn, child_env, free_port
from .mcp_client import list_all, notifications_until, run_client
from .upstreams import Log, UpstreamProcess, start_all

ADMIN_HEADERS_KEY = "X-API-Key"


class Deployment:
    def __init__(self, gateway: Gunicorn, keys: dict[str, str], db: Database, alpha_log: Path) -> None:
        self.gateway = gateway
        self.keys = keys
        self.db = db
        self.alpha_log = Log(alpha_log)
        self.ids: dict[str, str] = {}

    def rest(self, method: str, path: str, key: str | None = "admin", **kwargs: Any) -> requests.Response:
        headers = {} if key is None else {ADMIN_HEADERS_KEY: self.keys[key]}
        return requests.request(method, self.gateway.url + path, headers=headers, timeout=30, **kwargs)

    def url(self, endpoint: str, kind: str = "mcp") -> str:
        return f"{self.gateway.url}/metamcp/{endpoint}/{kind}"

    def tool_ids(self, namespace: str) -> dict[str, str]:
        """Exposed name -> tool id in a namespace (via the REST list, which also syncs)."""
        reply = self.rest("GET", f"/api/v1/namespaces/{self.ids[namespace]}/tools")
        assert reply.status_code == 200, reply.text
        return {t["original_name"] if t["server_name"] == "alpha" else f"beta:{t['original_name']}": t["id"]
                for t in reply.json()["tools"]}

    def patch_tool(self, namespace: str, tool_id: str, **changes: Any) -> requests.Response:
        return self.rest("PATCH", f"/api/v1/namespaces/{self.ids[namespace]}/tools/{tool_id}", json=changes)


def _names(tools: list[Any]) -> set[str]:
    return {t.name for t in tools}


def mcp_tools(url: str, key: str | None, sse: bool = False) -> dict[str, Any]:
    async def body(client: Client) -> dict[str, Any]:
        return {t.name: t for t in await list_all(client, "tools")}

    return run_client(url, key, body, sse=sse)


def mcp_call(url: str, key: str | None, name: str, arguments: dict[str, Any], sse: bool = False) -> Any:
    async def body(client: Client) -> Any:
        return await client.call_tool(name, arguments)

    return run_client(url, key, body, sse=sse)


def mcp_refused(url: str, key: str | None, name: str, arguments: dict[str, Any], sse: bool = False) -> str:
    """The JSON-RPC error message of a call that must be refused."""

    async def body(client: Client) -> str:
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as e:
            return e.error.message
        raise AssertionError(f"{name} was not refused: {result}")

    return run_client(url, key, body, sse=sse)


@pytest.fixture(scope="module")
def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    db = Database(database_url, 2)
    keys = {}
    with db.transaction() as cur:
        cur.execute("TRUNCATE api_keys, mcp_servers, mcp_sessions, namespaces, endpoints RESTART IDENTITY CASCADE")
        for name in ("admin", "scoped", "elsewhere"):
            new = crypto.generate_api_key()
            repository.insert_key(cur, name, new.hash, new.prefix, "client" if name == "scoped" else "admin")
            keys[name] = new.plain
    log_file = tmp_path_factory.mktemp("upstream") / "alpha.log"
    upstreams = [UpstreamProcess(name="alpha", log_file=log_file),
                 UpstreamProcess(name="beta", json_response=True)]
    env = child_env(
        DATABASE_URL=database_url,
        METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        METAMCP_WORKERS="2",
        METAMCP_UPSTREAM_TIMEOUT="5",
        METAMCP_KEEPALIVE_SECONDS="0.5",
    )
    gateway = Gunicorn(env, free_port())
    try:
        start_all(upstreams)
        gateway.wait_ready()
        d = Deployment(gateway, keys, db, log_file)
        for upstream in upstreams:
            reply = d.rest("POST", "/api/v1/mcp/servers",
                           json={"name": upstream.name, "transport": "streamable_http", "url": upstream.url})
            assert reply.status_code == 201, reply.text
            d.ids[upstream.name] = reply.json()["id"]
        for namespace, servers in (("research", ["alpha", "beta"]), ("other", ["beta"])):
            reply = d.rest("POST", "/api/v1/namespaces", json={"name": namespace})
            assert reply.status_code == 201, reply.text
            d.ids[namespace] = reply.json()["id"]
            for server in servers:
                reply = d.rest("PUT", f"/api/v1/namespaces/{d.ids[namespace]}/servers/{d.ids[server]}",
                               json={"status": "active"})
                assert reply.status_code == 200, reply.text
        for endpoint, namespace, auth in (
            ("research", "research", {"api_key": True}),
            ("qp", "research", {"api_key": True, "query_param": True}),
            ("open", "other", {"api_key": False}),
            ("others", "other", {"api_key": True}),
        ):
            reply = d.rest("POST", "/api/v1/endpoints",
                           json={"name": endpoint, "namespace_id": d.ids[namespace], "auth": auth})
            assert reply.status_code == 201, reply.text
        reply = d.rest("PATCH", "/api/v1/keys/2", json={"namespaces": ["research"]})
        assert reply.status_code == 200 and reply.json()["scoped"] and reply.json()["role"] == "client", reply.text
        yield d
    finally:
        gateway.stop()
        for upstream in upstreams:
            upstream.stop()
        db.close()


def test_tools_are_recorded_and_listed_per_namespace(deployment: Deployment) -> None:
    reply = deployment.rest("GET", f"/api/v1/namespaces/{deployment.ids['research']}/tools")
    assert reply.status_code == 200, reply.text
    tools = reply.json()["tools"]
    echo = next(t for t in tools if t["server_name"] == "alpha" and t["original_name"] == "echo")
    assert echo["name"] == "alpha__echo" and echo["status"] == "active"
    assert echo["input_schema"]["properties"]["message"]["type"] == "string"
    assert echo["overrides"] == {"name": None, "title": None, "description": None, "annotations": {}}
    assert {t["server_name"] for t in tools} == {"alpha", "beta"}
    with deployment.db.transaction() as cur:
        cur.execute("SELECT count(*) AS n, max(updated_at) AS at FROM tools")
        before = cur.fetchone()
    # Listing again (and through MCP, in either worker) writes nothing: the lists did not change.
    deployment.rest("GET", f"/api/v1/namespaces/{deployment.ids['research']}/tools")
    mcp_tools(deployment.url("research"), deployment.keys["admin"])
    with deployment.db.transaction() as cur:
        cur.execute("SELECT count(*) AS n, max(updated_at) AS at FROM tools")
        assert cur.fetchone() == before
    other = deployment.rest("GET", f"/api/v1/namespaces/{deployment.ids['other']}/tools").json()["tools"]
    assert {t["server_name"] for t in other} == {"beta"}


def test_overrides_and_status_apply_on_every_transport(deployment: Deployment) -> None:
    ids = deployment.tool_ids("research")
    reply = deployment.patch_tool("research", ids["echo"], name="say", title="Say",
                                  description="Say it back", annotations={"readOnlyHint": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["name"] == "say" and reply.json()["annotations"] == {"readOnlyHint": True}
    # annotations merge; a null value drops a key
    reply = deployment.patch_tool("research", ids["echo"], annotations={"openWorldHint": False})
    assert reply.json()["annotations"] == {"readOnlyHint": True, "openWorldHint": False}
    assert deployment.patch_tool("research", ids["beta:add"], status="inactive").status_code == 200
    admin = deployment.keys["admin"]

    for sse, url in ((False, deployment.url("research")), (True, deployment.url("research", "sse"))):
        tools = mcp_tools(url, admin, sse=sse)
        assert "say" in tools and "alpha__echo" not in tools and "beta__add" not in tools, sse
        assert tools["say"].description == "Say it back" and tools["say"].title == "Say"
        assert tools["say"].annotations.read_only_hint is True
        assert "alpha__add" in tools and "beta__echo" in tools
        result = mcp_call(url, admin, "say", {"message": "hi"}, sse=sse)
        assert not result.is_error and result.content[0].text == "alpha: hi"
        for hidden in ("alpha__echo", "beta__add"):
            assert "Unknown tool" in mcp_refused(url, admin, hidden, {"message": "x", "a": 1, "b": 2}, sse=sse)

    spec = requests.get(deployment.url("research", "api/openapi.json"), headers={"X-API-Key": admin},
                        timeout=30).json()
    paths = spec["paths"]
    assert "/metamcp/research/api/say" in paths and "/metamcp/research/api/beta__add" not in paths
    say = paths["/metamcp/research/api/say"]["post"]
    assert say["description"] == "Say it back"
    assert say["requestBody"]["content"]["application/json"]["schema"]["required"] == ["message"]
    reply = requests.post(deployment.url("research", "api/say"), json={"message": "rest"},
                          headers={"X-API-Key": admin}, timeout=30)
    assert reply.status_code == 200 and reply.json()["content"][0]["text"] == "alpha: rest"
    for hidden in ("alpha__echo", "beta__add"):
        reply = requests.post(deployment.url("research", f"api/{hidden}"), json={"a": 1, "b": 2},
                              headers={"X-API-Key": admin}, timeout=30)
        assert reply.status_code == 404 and reply.json()["error"] == "not_found"

    # /mcp is not a namespace: every tool under its own name
    everything = mcp_tools(deployment.gateway.url + "/mcp", admin)
    assert {"alpha__echo", "beta__add"} <= set(everything) and "say" not in everything
    # and the other namespace is untouched
    assert "beta__add" in mcp_tools(deployment.url("open"), None)


def test_a_renamed_inactive_tool_cannot_be_called_by_either_name(deployment: Deployment) -> None:
    ids = deployment.tool_ids("research")
    reply = deployment.patch_tool("research", ids["add"], name="plus", status="inactive")
    assert reply.status_code == 200, reply.text
    admin = deployment.keys["admin"]
    deployment.alpha_log.mark()
    for name in ("plus", "alpha__add"):
        for sse, url in ((False, deployment.url("research")), (True, deployment.url("research", "sse"))):
            assert "Unknown tool" in mcp_refused(url, admin, name, {"a": 1, "b": 2}, sse=sse)
        reply = requests.post(deployment.url("research", f"api/{name}"), json={"a": 1, "b": 2},
                              headers={"X-API-Key": admin}, timeout=30)
        assert reply.status_code == 404
    assert not any("tools/call" in line for line in deployment.alpha_log.lines())
    # Switched on again, it answers by its new name only.
    assert deployment.patch_tool("research", ids["add"], status="active").status_code == 200
    assert mcp_call(deployment.url("research"), admin, "plus", {"a": 1, "b": 2}).content[0].text == "3"
    assert "Unknown tool" in mcp_refused(deployment.url("research"), admin, "alpha__add", {"a": 1, "b": 2})


def test_override_names_are_checked_and_unique(deployment: Deployment) -> None:
    ids = deployment.tool_ids("research")
    ns = deployment.ids["research"]
    reply = deployment.patch_tool("research", ids["beta:echo"], name="alpha__slow")
    assert reply.status_code == 409 and "alpha__slow" in reply.json()["message"]
    reply = deployment.patch_tool("research", ids["beta:echo"], name="bad name!")
    assert reply.status_code == 422 and "name" in reply.json()["details"]
    # bulk: all or none
    reply = deployment.rest("PATCH", f"/api/v1/namespaces/{ns}/tools", json=[
        {"id": ids["beta:echo"], "name": "twin"}, {"id": ids["beta:fail"], "name": "twin"}])
    assert reply.status_code == 409
    reply = deployment.rest("PATCH", f"/api/v1/namespaces/{ns}/tools", json=[
        {"id": ids["beta:echo"], "description": "changed"},
        {"id": "00000000-0000-0000-0000-000000000000", "status": "inactive"}])
    assert reply.status_code == 404
    tools = {t["id"]: t for t in deployment.rest("GET", f"/api/v1/namespaces/{ns}/tools").json()["tools"]}
    assert tools[ids["beta:echo"]]["name"] == "beta__echo" and tools[ids["beta:echo"]]["description"] != "changed"
    reply = deployment.rest("PATCH", f"/api/v1/namespaces/{ns}/tools", json=[
        {"id": ids["beta:echo"], "name": "shout"}, {"id": ids["beta:fail"], "status": "inactive"}])
    assert reply.status_code == 200, reply.text
    changed = {t["id"]: t for t in reply.json()["tools"]}
    assert changed[ids["beta:echo"]]["name"] == "shout" and changed[ids["beta:fail"]]["status"] == "inactive"
    # null restores the upstream's name
    assert deployment.patch_tool("research", ids["beta:echo"], name=None).json()["name"] == "beta__echo"
    assert deployment.patch_tool("research", ids["beta:fail"], status="active").status_code == 200


def test_rest_tool_errors_are_http_errors_with_the_tools_content(deployment: Deployment) -> None:
    headers = {"X-API-Key": deployment.keys["admin"]}
    reply = requests.post(deployment.url("research", "api/alpha__fail"), json={}, headers=headers, timeout=30)
    assert reply.status_code == 422
    assert reply.json()["error"] == "tool_error" and "always fails" in reply.json()["message"]
    assert reply.json()["details"]["isError"] is True
    reply = requests.post(deployment.url("research", "api/alpha__add"), data="[1]", headers={
        **headers, "Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 400
    reply = requests.post(deployment.url("research", "api/beta__echo"), json={"message": 5}, headers=headers,
                          timeout=30)
    assert reply.status_code in (400, 422), reply.text


def test_server_status_in_a_namespace(deployment: Deployment) -> None:
    ns, beta = deployment.ids["other"], deployment.ids["beta"]
    assert deployment.rest("PUT", f"/api/v1/namespaces/{ns}/servers/{beta}", json={"status": "inactive"}).json()[
        "servers"] == [{"id": beta, "name": "beta", "status": "inactive", "is_active": True}]
    assert mcp_tools(deployment.url("open"), None) == {}
    assert deployment.rest("PUT", f"/api/v1/namespaces/{ns}/servers/{beta}", json={"status": "active"}).status_code == 200
    assert "beta__echo" in mcp_tools(deployment.url("open"), None)


def test_public_endpoint_needs_no_credential(deployment: Deployment) -> None:
    assert mcp_call(deployment.url("open"), None, "beta__echo", {"message": "anyone"}).content[0].text == "beta: anyone"
    assert mcp_call(deployment.url("open", "sse"), None, "beta__echo", {"message": "sse"}, sse=True).content[
        0].text == "beta: sse"
    reply = requests.get(deployment.url("open", "api/openapi.json"), timeout=30)
    assert reply.status_code == 200 and "components" not in reply.json()

    async def call_in_auto_mode(client: Client) -> str:  # the SDK's default: probes server/discover first
        return (await client.call_tool("beta__echo", {"message": "auto"})).content[0].text

    assert run_client(deployment.url("open"), None, call_in_auto_mode, mode="auto") == "beta: auto"


def test_query_param_key(deployment: Deployment) -> None:
    key = deployment.keys["admin"]
    result = mcp_call(deployment.url("qp") + f"?api_key={key}", None, "say", {"message": "q"})
    assert result.content[0].text == "alpha: q"
    result = mcp_call(deployment.url("qp", "sse") + f"?api_key={key}", None, "say", {"message": "q"}, sse=True)
    assert result.content[0].text == "alpha: q"
    spec = requests.get(deployment.url("qp", "api/openapi.json"), params={"api_key": key}, timeout=30).json()
    assert "apiKeyQuery" in spec["components"]["securitySchemes"]
    # without it, and on an endpoint that does not take it: 401
    assert requests.get(deployment.url("qp", "api/openapi.json"), timeout=30).status_code == 401
    assert requests.get(deployment.url("research", "api/openapi.json"), params={"api_key": key},
                        timeout=30).status_code == 401


def test_a_scoped_key_reaches_its_namespaces_only(deployment: Deployment) -> None:
    scoped = deployment.keys["scoped"]
    assert "say" in mcp_tools(deployment.url("research"), scoped)
    assert "say" in mcp_tools(deployment.url("research", "sse"), scoped, sse=True)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"X-API-Key": scoped, "Accept": "application/json, text/event-stream"}
    for url in (deployment.gateway.url + "/mcp", deployment.url("others")):
        reply = requests.post(url, json=init, headers=headers, timeout=30)
        assert reply.status_code == 403 and reply.json()["error"]["code"] == -32600, url
    assert requests.get(deployment.url("others", "sse"), headers=headers, timeout=30).status_code == 403
    assert requests.get(deployment.url("others", "api/openapi.json"), headers=headers, timeout=30).status_code == 403
    for path in ("/api/v1/mcp/servers", "/api/v1/namespaces", "/api/v1/endpoints"):
        assert deployment.rest("GET", path, key="scoped").status_code == 403
    # a JWT of the scoped key carries the scope
    token = requests.post(deployment.gateway.url + "/api/v1/auth/token", json={"api_key": scoped},
                          timeout=30).json()["access_token"]
    reply = requests.post(deployment.gateway.url + "/mcp", json=init, timeout=30,
                          headers={"Authorization": f"Bearer {token}", "Accept": headers["Accept"]})
    assert reply.status_code == 403
    # an unscoped key is not limited
    assert "beta__echo" in mcp_tools(deployment.url("others"), deployment.keys["elsewhere"])


def test_sessions_belong_to_their_endpoint(deployment: Deployment) -> None:
    key = deployment.keys["admin"]
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    reply = requests.post(deployment.url("research"), json=init, headers=headers, timeout=30)
    session = {**headers, "Mcp-Session-Id": reply.headers["Mcp-Session-Id"]}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert requests.post(deployment.url("research"), json=listing, headers=session, timeout=30).status_code == 200
    for url in (deployment.gateway.url + "/mcp", deployment.url("qp")):
        assert requests.post(url, json=listing, headers=session, timeout=30).status_code == 404
    assert requests.post(deployment.url("nowhere"), json=init, headers=headers, timeout=30).status_code == 404
    reply = requests.get(deployment.url("nowhere", "api/openapi.json"), headers=headers, timeout=30)
    assert reply.status_code == 404 and reply.json()["error"] == "not_found"
    # a legacy SSE session is not reachable through another endpoint or by another key
    stream = requests.get(deployment.url("research", "sse"), headers={"X-API-Key": key}, stream=True, timeout=30)
    try:
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines) == "event: endpoint"
        session_id = next(lines).split("sessionId=")[1]
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        for url, who in ((deployment.url("qp", "message"), key), (deployment.url("research", "message"),
                                                                   deployment.keys["elsewhere"])):
            reply = requests.post(url, params={"sessionId": session_id}, json=ping, headers={"X-API-Key": who},
                                  timeout=30)
            assert reply.status_code == 404, url
        reply = requests.post(deployment.url("research", "message"), params={"sessionId": session_id},
                              data="{", headers={"X-API-Key": key, "Content-Type": "application/json"}, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == -32700
    finally:
        stream.close()


def test_a_deleted_endpoint_stops_serving_at_once(deployment: Deployment) -> None:
    key = deployment.keys["admin"]
    reply = deployment.rest("POST", "/api/v1/endpoints", json={"name": "brief", "namespace_id": deployment.ids["other"]})
    assert reply.status_code == 201
    endpoint_id = reply.json()["id"]
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    reply = requests.post(deployment.url("brief"), json=init, headers=headers, timeout=30)
    session = {**headers, "Mcp-Session-Id": reply.headers["Mcp-Session-Id"]}
    assert deployment.rest("DELETE", f"/api/v1/endpoints/{endpoint_id}").status_code == 204
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    for _ in range(4):  # both workers
        assert requests.post(deployment.url("brief"), json=listing, headers=session, timeout=30).status_code == 404
    with deployment.db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM mcp_sessions WHERE id = %s", (session["Mcp-Session-Id"],))
        assert cur.fetchone()["n"] == 0


def test_legacy_sse_stream_keepalive_and_delivery_across_processes(
        deployment: Deployment, database_url: str, tmp_path: Path) -> None:
    """The stream is held by one gateway; messages POSTed to another gateway on the same
    database still arrive on it (through sse_outbox and NOTIFY)."""
    key = deployment.keys["admin"]
    second = Gunicorn(child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path),
                                METAMCP_WORKERS="1"), free_port())
    stream = requests.get(deployment.url("research", "sse"), headers={"X-API-Key": key}, stream=True, timeout=30)
    try:
        second.wait_ready()
        assert stream.status_code == 200
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines) == "event: endpoint"
        post_path = next(lines).removeprefix("data: ")
        assert post_path.startswith("/metamcp/research/message?sessionId=")
        deadline = time.monotonic() + 10
        seen_keepalive = False
        for body in (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "say", "arguments": {"message": "x"}}},
        ):
            reply = requests.post(second.url + post_path, json=body, headers={"X-API-Key": key}, timeout=30)
            assert reply.status_code == 202, reply.text
            if "id" not in body:
                continue
            while time.monotonic() < deadline:
                line = next(lines)
                seen_keepalive |= line.startswith(":")
                if line.startswith("data: "):
                    message = json.loads(line.removeprefix("data: "))
                    assert message["id"] == body["id"]
                    break
            if body["id"] == 1:
                assert message["result"]["protocolVersion"] == "2024-11-05"
            else:
                assert message["result"]["content"][0]["text"] == "alpha: x"
        while not seen_keepalive and time.monotonic() < deadline:
            seen_keepalive = next(lines).startswith(":")
        assert seen_keepalive
    finally:
        stream.close()
        second.stop()
    with deployment.db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM sse_outbox")
        assert cur.fetchone()["n"] == 0


def test_import_a_claude_desktop_config(deployment: Deployment) -> None:
    config = {"mcpServers": {
        "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem",
                                                  "/Users/me/Desktop", "/Users/me/Downloads"]},
        "github": {"command": "docker", "args": ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN",
                                                 "ghcr.io/github/github-mcp-server"],
                   "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_exampleexampleexample1234"}},
        "linear": {"type": "sse", "url": "https://mcp.linear.app/sse"},
        "remote": {"type": "http", "url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer abcdefghijklmnopqrstuvwxyz"}, "disabled": True},
    }}
    reply = deployment.rest("POST", "/api/v1/mcp/servers/import", json=config)
    assert reply.status_code == 200, reply.text
    assert sorted(reply.json()["created"]) == ["filesystem", "github", "linear", "remote"]
    exported = deployment.rest("GET", "/api/v1/mcp/servers/export", params={"include_secrets": "true"}).json()
    for name, entry in config["mcpServers"].items():
        assert exported["mcpServers"][name] == entry, name
    masked = deployment.rest("GET", "/api/v1/mcp/servers/export").json()["mcpServers"]
    assert masked["github"]["env"]["GITHUB_PERSONAL_ACCESS_TOKEN"].startswith("****")
    for name in config["mcpServers"]:
        server = next(s for s in deployment.rest("GET", "/api/v1/mcp/servers").json()["servers"] if s["name"] == name)
        assert deployment.rest("DELETE", f"/api/v1/mcp/servers/{server['id']}").status_code == 204


def test_namespace_changes_reach_every_worker_and_stream_at_once(deployment: Deployment) -> None:
    """A tool switched off disappears from the next list in both workers, and the endpoint's
    GET stream announces tools/list_changed; prompts, too, come from the namespace's servers only."""
    key = deployment.keys["admin"]
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    url = deployment.url("open")
    reply = requests.post(url, json=init, headers=headers, timeout=30)
    session = {**headers, "Mcp-Session-Id": reply.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}

    def names(method: str, key: str) -> set[str]:
        found: set[str] = set()
        for _ in range(6):  # several requests: both workers answer some
            result = requests.post(url, json={"jsonrpc": "2.0", "id": 2, "method": method}, headers=session,
                                   timeout=30).json()["result"]
            found |= {item["name"] for item in result[key]}
        return found

    assert names("prompts/list", "prompts") == {"beta__greet"}
    assert "beta__echo" in names("tools/list", "tools")
    tool_id = deployment.tool_ids("other")["beta:echo"]
    stream = requests.get(url, headers={**session, "Accept": "text/event-stream"}, stream=True, timeout=30)
    try:
        assert stream.status_code == 200
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines).startswith(":")
        assert deployment.patch_tool("other", tool_id, status="inactive").status_code == 200
        assert "beta__echo" not in names("tools/list", "tools")
        assert "notifications/tools/list_changed" in notifications_until(
            lines, "notifications/tools/list_changed")
    finally:
        stream.close()
        deployment.patch_tool("other", tool_id, status="active")
    assert "beta__echo" in names("tools/list", "tools")


def test_tools_an_upstream_adds_are_recorded_without_anyone_listing(deployment: Deployment) -> None:
    """The upstream announces tools/list_changed; the gateway records the new tool by itself.
    (A raw client without a GET stream: the SDK client would list again on the announcement.)"""
    url = deployment.gateway.url + "/mcp"
    headers = {"X-API-Key": deployment.keys["admin"], "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    session = {**headers, "Mcp-Session-Id": requests.post(url, json=init, headers=headers,
                                                          timeout=30).headers["Mcp-Session-Id"]}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "alpha__grow", "arguments": {"name": "grown"}}}
    reply = requests.post(url, json=call, headers=session, timeout=30)
    data = [json.loads(line[5:]) for line in reply.text.splitlines() if line.startswith("data:")]
    assert data[-1]["result"]["content"][0]["text"] == "grown"
    deadline = time.monotonic() + 10
    found = 0
    while time.monotonic() < deadline and not found:
        with deployment.db.transaction() as cur:
            cur.execute("SELECT count(*) AS n FROM tools t JOIN mcp_servers s ON s.id = t.server_id"
                        " WHERE s.name = 'alpha' AND t.name = 'grown' AND t.listed")
            found = cur.fetchone()["n"]
        time.sleep(0.1)
    assert found == 1
    assert "alpha__grown" in mcp_tools(deployment.url("research"), deployment.keys["admin"])


def test_smoke_test_script_against_endpoints(deployment: Deployment) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "test_client.py"), "--url", deployment.gateway.url]
    for extra in (["--endpoint", "research", "--api-key", deployment.keys["scoped"]], ["--endpoint", "open"]):
        result = subprocess.run([*script, *extra], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OpenAPI: HTTP 200" in result.stdout and "all steps passed" in result.stdout
    result = subprocess.run([*script, "--endpoint", "others", "--api-key", deployment.keys["scoped"]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "HTTP 403" in result.stdout


def test_calls_on_every_transport_are_audited(deployment: Deployment) -> None:
    """A call over legacy SSE (answered on the stream after the POST's 202) and one over the
    endpoint's REST tool API leave audit rows like a Streamable HTTP call does."""
    with deployment.db.transaction() as cur:
        cur.execute("SELECT clock_timestamp() AS now")
        since = cur.fetchone()["now"]
    assert mcp_call(deployment.url("open", "sse"), None, "beta__echo", {"message": "audited"}, sse=True).content[
        0].text == "beta: audited"
    reply = requests.post(deployment.url("research", "api/alpha__fail"), json={},
                          headers={"X-API-Key": deployment.keys["admin"]}, timeout=30)
    assert reply.status_code == 422
    request_id = reply.headers["X-Request-Id"]
    deadline, found = time.monotonic() + 10, {}
    while time.monotonic() < deadline and len(found) < 2:
        with deployment.db.transaction() as cur:
            cur.execute("SELECT endpoint, target, server, upstream_name, outcome, http_status, request_id,"
                        " duration_ms, upstream_ms FROM audit_log WHERE kind = 'call' AND action = 'tools/call'"
                        " AND ((endpoint = 'open' AND target = 'beta__echo' AND at >= %s) OR request_id = %s)",
                        (since, request_id))
            found = {row["endpoint"]: dict(row) for row in cur.fetchall()}
        time.sleep(0.1)
    sse, rest = found["open"], found["research"]
    assert (sse["server"], sse["upstream_name"], sse["outcome"], sse["http_status"]) == ("beta", "echo", "ok", 202)
    assert sse["duration_ms"] >= sse["upstream_ms"] > 0  # until the answer was on the stream
    assert (rest["target"], rest["server"], rest["upstream_name"], rest["outcome"], rest["http_status"]) == (
        "alpha__fail", "alpha", "fail", "tool_error", 422)
