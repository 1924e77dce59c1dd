"""Through a live 2-worker gunicorn: idle sessions are purged while it runs (404 on every
worker, also one that had the session cached; a legacy SSE session once its worker is killed),
and a SIGKILLed worker leaves no stdio child."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp import Client

from metamcp import crypto, repository
from metamcp.db import Database

from .conftest import Gunicorn, child_env, free_port
from .mcp_client import run_client
from .test_children import alive, gone_within

STUBBORN = Path(__file__).resolve().parent / "servers" / "stubborn_server.py"
MARKER = f"metamcp-lifecycle-e2e-{os.getpid()}"
IDLE_TIMEOUT = 3.0  # the least METAMCP_KEEPALIVE_SECONDS=0.5 allows is 2
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-06-18"}


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gunicorn, str]]:
    db = Database(database_url, 2)
    with db.transaction() as cur:
        cur.execute("TRUNCATE api_keys, mcp_servers, mcp_sessions RESTART IDENTITY CASCADE")
        new = crypto.generate_api_key()
        repository.insert_key(cur, "lifecycle", new.hash, new.prefix)
        repository.insert_server(cur, {"name": "kid", "transport": "stdio", "command": sys.executable,
                                       "args": [str(STUBBORN), MARKER]})
    db.close()
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="2", METAMCP_SESSION_IDLE_TIMEOUT=str(IDLE_TIMEOUT),
                    METAMCP_KEEPALIVE_SECONDS="0.5")
    server = Gunicorn(env, free_port())
    try:
        server.wait_ready()
        auth = {"X-API-Key": new.plain}
        namespace = requests.post(server.url + "/api/v1/namespaces", json={"name": "life"}, headers=auth,
                                  timeout=30)
        assert namespace.status_code == 201, namespace.text
        endpoint = requests.post(server.url + "/api/v1/endpoints", headers=auth, timeout=30, json={
            "name": "life", "namespace_id": namespace.json()["id"], "auth": {"api_key": True}})
        assert endpoint.status_code == 201, endpoint.text
        yield server, new.plain
    finally:
        server.stop(signal.SIGTERM)
        os.unlink(server.log.name)
        for pid in marked_processes():  # only reached when a test below already failed
            os.kill(pid, signal.SIGKILL)


def marked_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and MARKER.encode() in Path(entry, "cmdline").read_bytes() \
                    and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def workers(master: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                found.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


class WorkerConnection:
    """A kept-alive HTTP connection, and which gunicorn worker holds its other end."""

    def __init__(self, server: Gunicorn, key: str) -> None:
        self.server = server
        self.key = key
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.request("GET", "/health")
        assert self.conn.getresponse().read()
        self.worker = self._worker()

    def _worker(self) -> int | None:
        ours = self.conn.sock.getsockname()[1]
        wanted = (f"0100007F:{self.server.port:04X}", f"0100007F:{ours:04X}")
        inode = next((line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                      if tuple(line.split()[1:3]) == wanted), None)
        for pid in workers(self.server.proc.pid):
            try:
                if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    return pid
            except OSError:
                continue
        return None

    def rpc(self, method: str, session: str | None = None) -> tuple[int, dict[str, str]]:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if method == "initialize":
            body["params"] = {"protocolVersion": "2025-06-18", "capabilities": {},
                              "clientInfo": {"name": "lifecycle", "version": "1"}}
        headers = {**MCP_HEADERS, "X-API-Key": self.key}
        if session is not None:
            headers["Mcp-Session-Id"] = session
        self.conn.request("POST", "/mcp", body=json.dumps(body), headers=headers)
        response = self.conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())


def one_connection_per_worker(server: Gunicorn, key: str) -> list[WorkerConnection]:
    kept: dict[int, WorkerConnection] = {}
    for _ in range(200):
        connection = WorkerConnection(server, key)
        if connection.worker is not None and connection.worker not in kept:
            kept[connection.worker] = connection
        else:
            connection.conn.close()
        if len(kept) == 2:
            return list(kept.values())
        time.sleep(0.01)
    raise AssertionError(f"connections reached workers {sorted(kept)} only")


def session_rows(database_url: str, session_id: str) -> int:
    db = Database(database_url, 1)
    try:
        with db.transaction() as cur:
            cur.execute("SELECT count(*) AS n FROM mcp_sessions WHERE id = %s", (session_id,))
            row = cur.fetchone()
            return int(row["n"]) if row else 0
    finally:
        db.close()


def test_idle_session_is_purged_while_running_and_gone_on_every_worker(
        gateway: tuple[Gunicorn, str], database_url: str) -> None:
    server, key = gateway
    first, second = one_connection_per_worker(server, key)
    status, headers = first.rpc("initialize")
    assert status == 200
    session = headers["Mcp-Session-Id"]
    # In use on both workers for twice the idle timeout: never purged.
    deadline = time.monotonic() + 2 * IDLE_TIMEOUT
    while time.monotonic() < deadline:
        assert [first.rpc("ping", session)[0], second.rpc("ping", session)[0]] == [200, 200]
        time.sleep(0.2)
    # Left alone: a worker's periodic purge deletes the row while the gateway runs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and session_rows(database_url, session):
        time.sleep(0.2)
    assert session_rows(database_url, session) == 0
    # Both workers had it cached; both answer 404, so the client initializes again.
    assert [first.rpc("ping", session)[0], second.rpc("ping", session)[0]] == [404, 404]
    assert {first.worker, second.worker} <= workers(server.proc.pid)  # the same two workers
    assert first.rpc("initialize")[0] == 200
    assert "purged" in server.output() and "idle MCP sessions" in server.output()


def call_pids(server: Gunicorn, key: str) -> dict[str, int]:
    async def body(client: Client) -> str:
        return (await client.call_tool("kid__pids", {})).content[0].text

    return json.loads(run_client(server.url + "/mcp", key, body))


def test_killed_worker_leaves_no_stdio_child(gateway: tuple[Gunicorn, str]) -> None:
    server, key = gateway
    pids = call_pids(server, key)
    worker, child, grandchild = pids["ppid"], pids["pid"], pids["grandchild"]
    assert worker in workers(server.proc.pid) and alive(child) and alive(grandchild)
    os.kill(worker, signal.SIGKILL)
    # The child ignores SIGTERM and the end of its input, the grandchild ignores SIGTERM.
    assert gone_within([child, grandchild], 20), (alive(child), alive(grandchild))
    # gunicorn forks a new worker, which serves (and starts a child of its own) again.
    deadline = time.monotonic() + 60
    again: dict[str, int] = {}
    while time.monotonic() < deadline and not again:
        try:
            again = call_pids(server, key)
        except Exception:  # noqa: BLE001 - the replacement worker may not accept yet; retry
            time.sleep(0.5)
    assert again and again["ppid"] != worker and alive(again["pid"])
    assert f"worker {worker} left 1 stdio process groups" in server.output()


def test_legacy_sse_session_lives_with_its_stream_and_goes_with_its_killed_worker(
        gateway: tuple[Gunicorn, str], database_url: str) -> None:
    server, key = gateway
    stream = WorkerConnection(server, key)
    assert stream.worker is not None
    stream.conn.request("GET", "/metamcp/life/sse", headers={"X-API-Key": key, "Accept": "text/event-stream"})
    response = stream.conn.getresponse()
    assert response.status == 200
    session = ""
    for _ in range(20):
        line = response.readline().decode()
        if line.startswith("data:") and "sessionId=" in line:
            session = line.split("sessionId=", 1)[1].strip()
            break
    assert session
    time.sleep(2 * IDLE_TIMEOUT)
    assert session_rows(database_url, session) == 1  # the open stream keeps its session alive
    os.kill(stream.worker, signal.SIGKILL)  # nobody ends the session now: the purge must
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and session_rows(database_url, session):
        time.sleep(0.2)
    assert session_rows(database_url, session) == 0
    stream.conn.close()
