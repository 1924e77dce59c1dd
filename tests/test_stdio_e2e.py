"""Stdio servers through a live gunicorn: /mcp, health, logs, lifecycle; no process left behind."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp import Client

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .mcp_client import list_all, run_client
from .upstreams import SERVER

MARKER = f"metamcp-stdio-e2e-{os.getpid()}"
NPX = shutil.which("npx")


def marked_processes() -> list[int]:
    """Live processes whose command line or environment carries this module's marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry, "stat").read_text().split()[2] == "Z":
                continue
            if MARKER.encode() in Path(entry, "cmdline").read_bytes() + Path(entry, "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def wait_until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gunicorn, str]]:
    key = fresh_keys(database_url, stdio="admin")["stdio"]
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="2", METAMCP_STDIO_START_TIMEOUT="60", METAMCP_LIST_TIMEOUT="60")
    server = Gunicorn(env, free_port())
    try:
        server.wait_ready()
        auth = {"X-API-Key": key}
        kid = {"name": "kid", "transport": "stdio", "command": sys.executable,
               "args": [str(SERVER), "--transport", "stdio", "--name", MARKER, "--stderr-flood", "3"],
               "env": {"KID_TOKEN": "configured"}}
        assert requests.post(f"{server.url}/api/v1/mcp/servers", json=kid, headers=auth, timeout=30).ok
        if NPX:
            everything = {"name": "everything", "transport": "stdio", "command": NPX,
                          "args": ["-y", "@modelcontextprotocol/server-everything", "stdio"],
                          "env": {"METAMCP_MARKER": MARKER}}
            assert requests.post(f"{server.url}/api/v1/mcp/servers", json=everything, headers=auth,
                                 timeout=30).ok
        yield server, key
    finally:
        server.stop(signal.SIGTERM)
        for pid in marked_processes():  # only reached when the test below already failed
            os.kill(pid, signal.SIGKILL)


def test_stdio_tools_through_mcp(gateway: tuple[Gunicorn, str]) -> None:
    server, key = gateway

    async def body(client: Client) -> tuple[list[str], str, str | None]:
        tools = [t.name for t in await list_all(client, "tools")]
        kid = await client.call_tool("kid__echo", {"message": "hello"})
        everything = None
        if NPX:
            result = await client.call_tool("everything__echo", {"message": "hi there"})
            everything = result.content[0].text
        return tools, kid.content[0].text, everything

    tools, kid, everything = run_client(server.url + "/mcp", key, body)
    assert "kid__echo" in tools and kid == f"{MARKER}: hello"
    if NPX:
        assert "everything__echo" in tools and "hi there" in (everything or "")


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def warm(server: Gunicorn, key: str) -> None:
    """tools/list through /mcp: the workers that serve it start their children."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "warm", "version": "1"}}}
    headers = {**MCP_HEADERS, "X-API-Key": key}
    reply = requests.post(server.url + "/mcp", json=init, headers=headers, timeout=60)
    headers["Mcp-Session-Id"] = reply.headers["Mcp-Session-Id"]
    requests.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                  headers=headers, timeout=60)


def admin_health(server: Gunicorn, key: str) -> dict[str, Any]:
    return requests.get(server.url + "/api/v1/health", headers={"X-API-Key": key}, timeout=60).json()


def fetch_logs(server: Gunicorn, server_id: str, auth: dict[str, str]) -> dict[str, Any]:
    """The logs endpoint's answer, from a worker that runs the child (bounded retries)."""
    logs: dict[str, Any] = {}
    for _ in range(10):
        warm(server, auth["X-API-Key"])
        logs = requests.get(f"{server.url}/api/v1/mcp/servers/{server_id}/logs", headers=auth,
                            timeout=30).json()
        if logs["lines"]:
            break
    return logs


def test_health_rest_and_logs_show_the_child(gateway: tuple[Gunicorn, str]) -> None:
    server, key = gateway
    auth = {"X-API-Key": key}
    for _ in range(10):  # the answering worker's view: ask until it is one that runs the child
        warm(server, key)
        kid = next(u for u in admin_health(server, key)["upstreams"] if u["name"] == "kid")
        if (kid.get("process") or {}).get("running"):
            break
    assert kid["status"] == "ok" and kid["process"]["running"] and kid["process"]["pid"] > 0
    servers = requests.get(server.url + "/api/v1/mcp/servers", headers=auth, timeout=30).json()["servers"]
    listed = next(s for s in servers if s["name"] == "kid")
    assert set(listed["process"] or {}) in ({"running", "pid", "restarts", "last_error"}, set())
    assert listed["env"] == {"KID_TOKEN": "****"}
    logs = fetch_logs(server, listed["id"], auth)
    assert logs["server"] == "kid" and "stderr flood line 2" in "\n".join(logs["lines"])
    if NPX:
        everything_id = next(s["id"] for s in servers if s["name"] == "everything")
        logs = fetch_logs(server, everything_id, auth)
        assert any("STDIO" in line or "server" in line.lower() for line in logs["lines"])


def test_deactivating_stops_children_in_every_worker(gateway: tuple[Gunicorn, str]) -> None:
    server, key = gateway
    auth = {"X-API-Key": key}
    for _ in range(4):
        warm(server, key)  # both workers (most likely) start their children
    assert marked_processes()
    servers = requests.get(server.url + "/api/v1/mcp/servers", headers=auth, timeout=30).json()["servers"]
    for entry in servers:
        patched = requests.patch(f"{server.url}/api/v1/mcp/servers/{entry['id']}", json={"is_active": False},
                                 headers=auth, timeout=30)
        assert patched.status_code == 200
    # The next request in each worker reloads the registry and stops what it no longer serves.
    assert wait_until(lambda: not admin_health(server, key)["upstreams"]
                      and not marked_processes(), 20), marked_processes()
    for entry in servers:
        requests.patch(f"{server.url}/api/v1/mcp/servers/{entry['id']}", json={"is_active": True},
                       headers=auth, timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_gunicorn_shutdown_leaves_no_process(gateway: tuple[Gunicorn, str], sig: signal.Signals) -> None:
    first, key = gateway
    # A gateway of its own on the same database (so the registry is shared), stopped by `sig`.
    server = Gunicorn(first.env, free_port())
    try:
        server.wait_ready()

        async def body(client: Client) -> str:
            return (await client.call_tool("kid__echo", {"message": "last"})).content[0].text

        assert run_client(server.url + "/mcp", key, body) == f"{MARKER}: last"
        assert marked_processes()
        started = time.monotonic()
        assert server.stop(sig) == 0
        assert time.monotonic() - started < 10  # standing streams end at once, children politely
        assert wait_until(lambda: not marked_processes(), 10), marked_processes()
    finally:
        server.stop()
