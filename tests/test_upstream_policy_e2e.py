"""The address policy and upstream error texts end to end: live gunicorn, real SDK upstreams,
the SDK as the MCP client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from mcp import Client
from mcp.shared.exceptions import MCPError

from metamcp.db import Database

from .conftest import ROOT, Gunicorn, child_env, free_port, run_keys
from .conftest import start_gunicorn as start_gunicorn  # noqa: F401 - the fixture
from .mcp_client import list_all, run_client
from .upstreams import Log, UpstreamProcess
from .upstreams import start_upstream as start_upstream  # noqa: F401 - the fixture

#: What a client-facing error must never show: causes, addresses, ports, URLs.
LEAKS = re.compile(r"refused|127\.0\.0\.1|localhost|http|:\d{2,5}|timed out while|HTTP \d{3}|resolve", re.I)


def _fresh(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute("TRUNCATE api_keys, mcp_servers, mcp_sessions, namespaces, endpoints RESTART IDENTITY CASCADE")


def _admin_key(env: dict[str, str]) -> str:
    result = run_keys(env, "create", "--name", "policy", "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["key"])


def _call_error(url: str, key: str, tool: str, sse: bool = False) -> str:
    """The JSON-RPC error message an MCP client gets for calling `tool` (`sse`: legacy SSE)."""

    async def body(client: Client) -> str:
        try:
            result = await client.call_tool(tool, {"message": "hi"})
        except MCPError as e:
            return e.error.message
        raise AssertionError(f"{tool} did not fail: {result}")

    return str(run_client(url, key, body, sse=sse))


def _tool_names(url: str, key: str) -> list[str]:
    async def body(client: Client) -> list[str]:
        return [t.name for t in await list_all(client, "tools")]

    return list(run_client(url, key, body))


def test_an_upstream_registered_while_allowed_is_refused_at_connect_time(
        database_url: str, db: Database, tmp_path: Path, start_gunicorn: Callable[..., Gunicorn],
        start_upstream: Callable[..., UpstreamProcess]) -> None:
    _fresh(db)
    log = Log(tmp_path / "alpha.log")
    alpha = start_upstream("alpha", log_file=log.path)
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path / "data"), METAMCP_WORKERS="1")
    # Registered through the import script while loopback is allowed ...
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"alpha": {"url": alpha.url}}}))
    imported = subprocess.run([sys.executable, str(ROOT / "scripts" / "servers.py"), "import", str(config)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    key = _admin_key(env)
    # ... then served with loopback denied: every connection is checked after resolution.
    gateway = start_gunicorn({**env, "METAMCP_UPSTREAM_DENY": "loopback"})
    mcp_url = gateway.url + "/mcp"
    assert not any(name.startswith("alpha__") for name in _tool_names(mcp_url, key))
    message = _call_error(mcp_url, key, "alpha__echo")
    assert message == "Upstream server 'alpha' is unavailable"
    admin = {"X-API-Key": key}
    server_id = requests.get(gateway.url + "/api/v1/mcp/servers", headers=admin, timeout=30).json()["servers"][0]["id"]
    live = requests.get(f"{gateway.url}/api/v1/mcp/servers/{server_id}/tools", headers=admin, timeout=30)
    assert live.status_code == 502
    assert live.json()["message"] == ("upstream 'alpha': 127.0.0.1 is loopback (refused by "
                                      "METAMCP_UPSTREAM_DENY) while initializing")
    # Refused by the policy, not by the network: the upstream is up and never heard a thing.
    assert log.lines() == []
    assert requests.post(alpha.url, json={}, timeout=10).status_code >= 400  # reachable directly
    assert "127.0.0.1 is loopback (refused by METAMCP_UPSTREAM_DENY)" in gateway.output()
    assert "Traceback" not in gateway.output()
    # and the same URL cannot be registered under this policy
    again = requests.post(gateway.url + "/api/v1/mcp/servers", headers=admin, timeout=30,
                          json={"name": "again", "transport": "streamable_http", "url": alpha.url})
    assert again.status_code == 422 and "is loopback (refused by METAMCP_UPSTREAM_DENY)" in again.json()["message"]


def test_clients_get_a_generic_upstream_error_and_admins_the_cause(
        database_url: str, db: Database, tmp_path: Path, start_gunicorn: Callable[..., Gunicorn],
        start_upstream: Callable[..., UpstreamProcess]) -> None:
    _fresh(db)
    beta = start_upstream("beta", json_response=True)
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path / "data"), METAMCP_WORKERS="1")
    key = _admin_key(env)
    gateway = start_gunicorn(env)
    admin = {"X-API-Key": key}

    def rest(method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, gateway.url + path, headers=admin, json=body, timeout=30)

    ids = {}
    for name, url in (("beta", beta.url), ("down", f"http://127.0.0.1:{free_port()}/mcp")):
        reply = rest("POST", "/api/v1/mcp/servers", {"name": name, "transport": "streamable_http", "url": url})
        assert reply.status_code == 201, reply.text
        ids[name] = reply.json()["id"]
    namespace = rest("POST", "/api/v1/namespaces", {"name": "team"}).json()["id"]
    for server in ids.values():
        assert rest("PUT", f"/api/v1/namespaces/{namespace}/servers/{server}", {"status": "active"}).status_code == 200
    assert rest("POST", "/api/v1/endpoints", {"name": "team", "namespace_id": namespace,
                                               "auth": {"api_key": True}}).status_code == 201
    mcp_url = gateway.url + "/mcp"
    assert "beta__echo" in _tool_names(mcp_url, key)  # beta listed (and its client kept) ...
    beta.stop()  # ... then it goes away: the call itself fails (connection refused)
    for url, sse in ((mcp_url, False), (gateway.url + "/metamcp/team/mcp", False),
                     (gateway.url + "/metamcp/team/sse", True)):
        message = _call_error(url, key, "beta__echo", sse=sse)
        assert message == "Upstream server 'beta' is unavailable"
        assert not LEAKS.search(message)
    message = _call_error(mcp_url, key, "down__echo")  # never reachable: refused while routing
    assert message == "Upstream server 'down' is unavailable"
    tool_api = requests.post(gateway.url + "/metamcp/team/api/beta__echo", json={"message": "hi"},
                             headers=admin, timeout=30)
    assert tool_api.status_code == 502
    assert tool_api.json() == {"error": "bad_gateway", "message": "Upstream server 'beta' is unavailable",
                               "details": None}
    # The admin routes keep the cause; the log has it once per failure, without a traceback.
    live = rest("GET", f"/api/v1/mcp/servers/{ids['beta']}/tools")
    assert live.status_code == 502 and "connection refused" in live.json()["message"]
    down = rest("GET", f"/api/v1/mcp/servers/{ids['down']}/tools")
    assert down.status_code == 502 and "connection refused" in down.json()["message"]
    output = gateway.output()
    # (While initializing: a 2025 client's first call opens the session; the lists went stateless.)
    assert output.count("beta skipped: upstream 'beta': connection refused while") == 4
    assert "Traceback" not in output
