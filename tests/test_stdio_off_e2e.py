"""METAMCP_STDIO=off through a live gunicorn: registration refused (REST, import, scripts/servers.py)
and a stdio server registered earlier never starts, on /mcp, /health or the live tools route."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from mcp import Client
from mcp.shared.exceptions import MCPError

from metamcp.crypto import SecretBox
from metamcp.db import Database
from metamcp.servers import ServerRegistry

from .conftest import ROOT, TEST_ENCRYPTION_KEY, child_env
from .mcp_client import list_all, run_client
from .upstreams import SERVER, UpstreamProcess
from .upstreams import start_upstream as start_upstream  # noqa: F401 - the fixture


def test_stdio_off_refuses_registration_and_start(
        database_url: str, db: Database, tmp_path: Path, make_key: Callable[..., tuple[int, str]],
        start_gunicorn: Callable[..., Any], start_upstream: Callable[..., UpstreamProcess]) -> None:
    _, admin = make_key("admin")
    ran = tmp_path / "ran"  # the child would create it first thing, were it ever started
    child = ("import runpy, sys; open(sys.argv[1], 'w').close(); sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[1], run_name='__main__')")
    # Registered while stdio was allowed.
    kid = ServerRegistry(db, SecretBox(TEST_ENCRYPTION_KEY)).create({
        "name": "kid", "transport": "stdio", "command": sys.executable,
        "args": ["-c", child, str(ran), str(SERVER), "--transport", "stdio", "--name", "kid"]})
    alpha = start_upstream("alpha")
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path), METAMCP_WORKERS="2",
                    METAMCP_STDIO="off", ENCRYPTION_KEY=TEST_ENCRYPTION_KEY.hex(), JWT_SECRET="j" * 40)
    gateway = start_gunicorn(env)
    auth = {"X-API-Key": admin}
    url = gateway.url + "/api/v1/mcp/servers"
    assert requests.post(url, headers=auth, timeout=30,
                         json={"name": "alpha", "transport": "streamable_http", "url": alpha.url}).status_code == 201
    reply = requests.post(url, headers=auth, timeout=30,
                          json={"name": "new", "transport": "stdio", "command": sys.executable})
    assert reply.status_code == 422 and "METAMCP_STDIO=off" in reply.json()["message"]
    reply = requests.post(url + "/import", headers=auth, timeout=30,
                          json={"mcpServers": {"new": {"command": sys.executable}}})
    assert reply.status_code == 422 and "METAMCP_STDIO=off" in reply.json()["details"]["new"]

    async def body(client: Client) -> tuple[list[str], str, str]:
        tools = [t.name for t in await list_all(client, "tools")]
        echo = await client.call_tool("alpha__echo", {"message": "hi"})
        try:
            refused = await client.call_tool("kid__echo", {"message": "hi"})
            kid_text = refused.content[0].text if refused.content else ""
        except MCPError as e:
            kid_text = e.error.message
        return tools, echo.content[0].text, kid_text

    for _ in range(2):  # either worker
        tools, echo, kid_text = run_client(gateway.url + "/mcp", admin, body)
        assert "alpha__echo" in tools and not any(t.startswith("kid__") for t in tools)
        # Clients get the generic text; the cause (METAMCP_STDIO=off) is for admins (below).
        assert echo == "alpha: hi" and kid_text == "Upstream server 'kid' is unavailable", kid_text
    health = requests.get(gateway.url + "/api/v1/health", headers=auth, timeout=60)  # must not start it either
    assert health.status_code == 200, health.text
    reply = requests.get(f"{url}/{kid['id']}/tools", headers=auth, timeout=30)
    assert reply.status_code == 502 and "METAMCP_STDIO=off" in reply.json()["message"], reply.text
    assert not ran.exists(), "a stdio child was started although METAMCP_STDIO=off"
    assert "Traceback" not in gateway.output()

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mcpServers": {"other": {"command": sys.executable}}}))
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "servers.py"), "import", str(config)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert script.returncode == 1 and "METAMCP_STDIO=off" in script.stderr, script.stderr
    names = sorted(s["name"] for s in requests.get(url, headers=auth, timeout=30).json()["servers"])
    assert names == ["alpha", "kid"]
