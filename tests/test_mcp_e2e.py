"""/mcp end to end: live gunicorn (2 workers), real SDK upstreams, the SDK as the client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference

from metamcp import crypto, repository
from metamcp.db import Database

from .conftest import ROOT, Gunicorn, child_env, free_port
from .mcp_client import list_all, notifications_until, run_client
from .upstreams import UpstreamProcess, start_all

PAGE_SIZE = 5
CONFIGURED_SECRET = "configured-upstream-secret"


class Deployment:
    def __init__(self, gateway: Gunicorn, key: str, other_key: str, upstreams: dict[str, UpstreamProcess],
                 db: Database) -> None:
        self.gateway = gateway
        self.url = gateway.url + "/mcp"
        self.key = key
        self.other_key = other_key
        self.upstreams = upstreams
        self.db = db
        self.env: dict[str, str] = {}
        self.alpha_log = Path()

    def open_session(self, base: str | None = None) -> dict[str, str]:
        """Initialize by hand; returns the headers of the new session."""
        headers = {"X-API-Key": self.key, "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
        reply = requests.post((base or self.gateway.url) + "/mcp", headers=headers, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "1"}}})
        assert reply.status_code == 200, reply.text
        return {**headers, "Mcp-Session-Id": reply.headers["Mcp-Session-Id"],
                "MCP-Protocol-Version": "2025-11-25"}

    def rest(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.gateway.url + path, headers={"X-API-Key": self.key},
                                timeout=30, **kwargs)

    def client(self, body: Callable[[Client], Any], **options: Any) -> Any:
        return run_client(self.url, self.key, body, **options)


def _hanging_listener() -> tuple[socket.socket, threading.Event]:
    """A TCP port that accepts and never answers: the slowest possible upstream."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return sock, stop


@pytest.fixture(scope="module")
def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    db = Database(database_url, 2)
    with db.transaction() as cur:
        cur.execute("TRUNCATE api_keys, mcp_servers, mcp_sessions RESTART IDENTITY CASCADE")
        keys = []
        for name in ("e2e", "other"):
            new = crypto.generate_api_key()
            repository.insert_key(cur, name, new.hash, new.prefix)
            keys.append(new.plain)
    log_file = tmp_path_factory.mktemp("upstream") / "alpha.log"
    # Bound before the upstreams pick their ports: a port they picked (and released until they
    # start) could otherwise be handed to this listener, and an upstream would talk to it.
    hang, stop_hang = _hanging_listener()
    upstreams = {
        "alpha": UpstreamProcess(name="alpha", page_size=2, log_file=log_file),  # SSE, paginates
        "beta": UpstreamProcess(name="beta", json_response=True),     # JSON replies
        "gamma": UpstreamProcess(name="gamma", transport="sse"),      # legacy HTTP+SSE
    }
    env = child_env(
        DATABASE_URL=database_url,
        METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        METAMCP_WORKERS="2",
        METAMCP_PAGE_SIZE=str(PAGE_SIZE),
        METAMCP_UPSTREAM_TIMEOUT="3",
        METAMCP_LIST_TIMEOUT="1.5",
        METAMCP_KEEPALIVE_SECONDS="0.5",
    )
    gateway = Gunicorn(env, free_port())
    try:
        start_all(upstreams.values())
        gateway.wait_ready()
        deployment = Deployment(gateway, keys[0], keys[1], upstreams, db)
        deployment.env = env
        deployment.alpha_log = log_file
        servers = [
            {"name": "alpha", "transport": "streamable_http", "url": upstreams["alpha"].url,
             "headers": {"X-Upstream-Secret": CONFIGURED_SECRET}},
            {"name": "beta", "transport": "streamable_http", "url": upstreams["beta"].url,
             "bearer_token": CONFIGURED_SECRET},
            {"name": "gamma", "transport": "sse", "url": upstreams["gamma"].url},
            {"name": "down", "transport": "streamable_http", "url": f"http://127.0.0.1:{free_port()}/mcp"},
            {"name": "hung", "transport": "streamable_http",
             "url": f"http://127.0.0.1:{hang.getsockname()[1]}/mcp"},
        ]
        for server in servers:
            assert deployment.rest("POST", "/api/v1/mcp/servers", json=server).status_code == 201
        yield deployment
    finally:
        gateway.stop()
        for upstream in upstreams.values():
            upstream.stop()
        stop_hang.set()
        hang.close()
        db.close()


def names(items: list[Any]) -> list[str]:
    return [item.name for item in items]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_every_method_through_the_official_client(deployment: Deployment, mode: str) -> None:
    async def body(client: Client) -> dict[str, Any]:
        tools = await list_all(client, "tools")
        add = await client.call_tool("alpha__add", {"a": 2, "b": 3})
        echo_beta = await client.call_tool("beta__echo", {"message": "via json"})
        echo_gamma = await client.call_tool("gamma__echo", {"message": "via legacy sse"})
        prompts = await list_all(client, "prompts")
        prompt = await client.get_prompt("alpha__greet", {"name": "Ada"})
        resources = await list_all(client, "resources")
        read = await client.read_resource(resources[0].uri)
        templates = await list_all(client, "resource_templates")
        completion = await client.complete(PromptReference(type="ref/prompt", name="beta__greet"),
                                           {"name": "name", "value": "A"})
        if client.protocol_version != "2026-07-28":  # removed in 2026-07-28 (404, tests/test_modern_transport.py)
            await client.send_ping()
            await client.set_logging_level("warning")
        return {"version": client.protocol_version, "tools": tools, "add": add, "beta": echo_beta,
                "gamma": echo_gamma, "prompts": prompts, "prompt": prompt, "resources": resources,
                "read": read, "templates": templates, "completion": completion}

    got = deployment.client(body, mode=mode)
    assert got["version"] == ("2026-07-28" if mode == "auto" else "2025-11-25")  # auto probes server/discover
    tool_names = names(got["tools"])
    assert len(tool_names) == len(set(tool_names))
    for server in ("alpha", "beta", "gamma"):
        for tool in ("echo", "add", "slow", "progress", "fail", "headers"):
            assert f"{server}__{tool}" in tool_names
    assert not any(n.startswith(("down__", "hung__")) for n in tool_names)
    assert got["add"].content[0].text == "5"
    assert "via json" in got["beta"].content[0].text
    assert "via legacy sse" in got["gamma"].content[0].text
    assert {"alpha__greet", "beta__greet", "gamma__greet"} <= set(names(got["prompts"]))
    assert "Ada" in got["prompt"].messages[0].content.text
    assert {str(r.uri) for r in got["resources"]} >= {"test://alpha/info", "test://beta/info"}
    assert got["read"].contents[0].text
    assert got["templates"]
    assert got["completion"].completion.values


def test_aggregated_lists_paginate_across_upstreams(deployment: Deployment) -> None:
    async def body(client: Client) -> tuple[Any, list[Any]]:
        first = await client.list_tools()
        return first, await list_all(client, "tools")

    first, everything = deployment.client(body)
    assert len(first.tools) == PAGE_SIZE and first.next_cursor
    assert len(everything) > 3 * PAGE_SIZE
    assert sorted(names(everything)) == sorted(set(names(everything)))


def test_unknown_tool_and_bad_cursor_are_protocol_errors(deployment: Deployment) -> None:
    async def body(client: Client) -> list[int]:
        codes = []
        for call in (lambda: client.call_tool("alpha__nope", {}),
                     lambda: client.call_tool("nosuchserver__echo", {}),
                     lambda: client.list_tools(cursor="not-a-cursor")):
            try:
                await call()
            except MCPError as e:
                codes.append(e.error.code)
        return codes

    assert deployment.client(body) == [-32602, -32602, -32602]


def test_tool_failure_is_a_result_not_an_error(deployment: Deployment) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool("alpha__fail", {})

    result = deployment.client(body)
    assert result.is_error is True and result.content


def test_progress_and_logs_stream_before_the_result(deployment: Deployment) -> None:
    events: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append(f"progress {progress:g}")

    async def on_log(params: Any) -> None:
        events.append("log")

    async def body(client: Client) -> Any:
        result = await client.call_tool("alpha__progress", {"steps": 3}, progress_callback=on_progress)
        events.append("result")
        return result

    result = deployment.client(body, logging_callback=on_log)
    assert result.content[0].text == "done"
    assert [e for e in events if e.startswith("progress")] == ["progress 1", "progress 2", "progress 3"]
    assert events[-1] == "result" and "log" in events


def test_credentials_never_reach_the_upstream(deployment: Deployment) -> None:
    async def body(client: Client) -> tuple[str, str]:
        alpha = await client.call_tool("alpha__headers", {})
        beta = await client.call_tool("beta__headers", {})
        return alpha.content[0].text, beta.content[0].text

    alpha_text, beta_text = deployment.client(body)
    alpha, beta = (json.loads(t) for t in (alpha_text, beta_text))
    alpha = {k.lower(): v for k, v in alpha.items()}
    beta = {k.lower(): v for k, v in beta.items()}
    assert alpha["x-upstream-secret"] == CONFIGURED_SECRET
    assert beta["authorization"] == f"Bearer {CONFIGURED_SECRET}"
    for seen in (alpha, beta):
        assert "x-api-key" not in seen
        assert deployment.key not in json.dumps(seen)
    assert "authorization" not in alpha


def test_slow_call_times_out_with_a_clear_error(deployment: Deployment) -> None:
    async def body(client: Client) -> tuple[int, str]:
        try:
            await client.call_tool("alpha__slow", {"seconds": 6})
        except MCPError as e:
            return e.error.code, e.error.message
        return 0, ""

    # the client learns which server timed out, not how long the gateway waited for what
    assert deployment.client(body) == (-32001, "Upstream server 'alpha' timed out")


def test_down_and_hung_upstreams_are_skipped_and_reported(deployment: Deployment) -> None:
    async def body(client: Client) -> list[str]:
        return names(await list_all(client, "tools"))

    time.sleep(5.5)  # past the retry pause: this list asks the dead upstreams again
    start = time.monotonic()
    assert "alpha__echo" in deployment.client(body)
    assert time.monotonic() - start < 1.5 + 3.0  # the hung upstream costs its list timeout, no more
    # The health report is the answering worker's view (nothing is pinged for it): ask until
    # a worker that served a list answers (bounded).
    for _ in range(10):
        health = deployment.rest("GET", "/api/v1/health").json()
        statuses = {u["name"]: u["status"] for u in health["upstreams"]}
        if "unknown" not in statuses.values():
            break
        deployment.client(body)
    assert statuses == {"alpha": "ok", "beta": "ok", "gamma": "ok", "down": "error", "hung": "error"}
    errors = {u["name"]: u["last_error"] for u in health["upstreams"]}
    assert "down" in errors["down"] and errors["alpha"] is None


def test_upstream_restart_is_invisible_to_the_client(deployment: Deployment) -> None:
    async def body(client: Client) -> tuple[str, str]:
        before = await client.call_tool("alpha__echo", {"message": "one"})
        deployment.upstreams["alpha"].restart()
        after = await client.call_tool("alpha__echo", {"message": "two"})
        return before.content[0].text, after.content[0].text

    before, after = deployment.client(body)
    assert "one" in before and "two" in after


def test_a_session_is_served_by_any_gateway_process(deployment: Deployment) -> None:
    """A second gateway on the same database serves a session the first one created."""
    headers = deployment.open_session()
    second = Gunicorn({**deployment.env, "METAMCP_WORKERS": "1"}, free_port())
    try:
        second.wait_ready()
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "beta__echo", "arguments": {"message": "elsewhere"}}}
        for base in (second.url, deployment.gateway.url, second.url):
            reply = requests.post(base + "/mcp", headers=headers, json=call, timeout=30)
            assert reply.status_code == 200, reply.text
            assert "elsewhere" in reply.text
        ended = requests.delete(second.url + "/mcp", headers=headers, timeout=30)
        assert ended.status_code == 204
        for base in (deployment.gateway.url, second.url):
            assert requests.post(base + "/mcp", headers=headers, json=call, timeout=30).status_code == 404
    finally:
        second.stop()


def _log_lines(deployment: Deployment) -> list[str]:
    return deployment.alpha_log.read_text().splitlines() if deployment.alpha_log.exists() else []


def _wait_for_log(deployment: Deployment, line: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if line in _log_lines(deployment):
            return True
        time.sleep(0.05)
    return False


def test_cancelled_notification_reaches_the_upstream(deployment: Deployment) -> None:
    deployment.alpha_log.write_text("")
    headers = deployment.open_session()
    url = deployment.gateway.url + "/mcp"
    call = {"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call",
            "params": {"name": "alpha__slow", "arguments": {"seconds": 2.5}}}
    result: dict[str, Any] = {}

    def run_call() -> None:
        result["reply"] = requests.post(url, headers=headers, json=call, timeout=30)

    caller = threading.Thread(target=run_call)
    caller.start()
    assert _wait_for_log(deployment, "slow start 2.5")
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
              "params": {"requestId": "slow-1", "reason": "user pressed stop"}}
    # Whichever worker takes this, the one running the call hears it (LISTEN/NOTIFY).
    assert requests.post(url, headers=headers, json=cancel, timeout=30).status_code == 202
    assert _wait_for_log(deployment, "slow cancelled")
    caller.join(timeout=30)
    assert "slow done" not in _log_lines(deployment)


def test_client_that_disconnects_does_not_leak_the_upstream_call(deployment: Deployment) -> None:
    deployment.alpha_log.write_text("")
    headers = deployment.open_session()
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "alpha__slow", "arguments": {"seconds": 2.5}}}
    with requests.post(deployment.gateway.url + "/mcp", headers=headers, json=call, timeout=30,
                       stream=True) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        assert _wait_for_log(deployment, "slow start 2.5")
    # Connection closed mid-call: the next keep-alive write fails and the call is cancelled.
    assert _wait_for_log(deployment, "slow cancelled", seconds=5)
    time.sleep(0.5)
    assert "slow done" not in _log_lines(deployment)


def test_rest_lists_and_executes_tools_live(deployment: Deployment) -> None:
    servers = {s["name"]: s["id"] for s in deployment.rest("GET", "/api/v1/mcp/servers").json()["servers"]}
    tools = deployment.rest("GET", f"/api/v1/mcp/servers/{servers['gamma']}/tools")
    assert tools.status_code == 200
    assert {"echo", "add", "slow"} <= {t["name"] for t in tools.json()["tools"]}
    executed = deployment.rest("POST", f"/api/v1/mcp/servers/{servers['beta']}/tools/add/execute",
                               json={"arguments": {"a": 20, "b": 22}})
    assert executed.status_code == 200, executed.text
    assert executed.json()["content"][0]["text"] == "42" and executed.json()["isError"] is False
    failed = deployment.rest("POST", f"/api/v1/mcp/servers/{servers['alpha']}/tools/fail/execute", json={})
    assert failed.status_code == 200 and failed.json()["isError"] is True
    down = deployment.rest("GET", f"/api/v1/mcp/servers/{servers['down']}/tools")
    assert down.status_code == 502 and down.json()["error"] == "bad_gateway"
    bad = deployment.rest("POST", f"/api/v1/mcp/servers/{servers['beta']}/tools/add/execute",
                          json={"arguments": "nope"})
    assert bad.status_code == 422


def test_registry_changes_reach_every_worker_at_once(deployment: Deployment) -> None:
    servers = {s["name"]: s["id"] for s in deployment.rest("GET", "/api/v1/mcp/servers").json()["servers"]}
    headers = deployment.open_session()
    url = deployment.gateway.url + "/mcp"
    listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}

    def tool_names() -> set[str]:
        names: set[str] = set()
        for _ in range(6):  # several requests: both workers answer some
            reply = requests.post(url, headers=headers, json=listing, timeout=30).json()
            names |= {t["name"] for t in reply["result"]["tools"]}
            while "nextCursor" in reply["result"]:
                page = {**listing, "params": {"cursor": reply["result"]["nextCursor"]}}
                reply = requests.post(url, headers=headers, json=page, timeout=30).json()
                names |= {t["name"] for t in reply["result"]["tools"]}
        return names

    assert "beta__echo" in tool_names()
    stream = requests.get(url, headers={**headers, "Accept": "text/event-stream"}, stream=True, timeout=30)
    try:
        assert stream.status_code == 200
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines).startswith(":")  # the stream is open
        patched = deployment.rest("PATCH", f"/api/v1/mcp/servers/{servers['beta']}", json={"is_active": False})
        assert patched.status_code == 200
        assert not any(n.startswith("beta__") for n in tool_names())
        assert "notifications/tools/list_changed" in notifications_until(
            lines, "notifications/tools/list_changed")
    finally:
        stream.close()
        deployment.rest("PATCH", f"/api/v1/mcp/servers/{servers['beta']}", json={"is_active": True})
    assert "beta__echo" in tool_names()


def test_upstream_list_changed_refreshes_and_reaches_clients(deployment: Deployment) -> None:
    headers = deployment.open_session()
    url = deployment.gateway.url + "/mcp"
    stream = requests.get(url, headers={**headers, "Accept": "text/event-stream"}, stream=True, timeout=30)
    try:
        lines = stream.iter_lines(decode_unicode=True)
        assert next(lines).startswith(":")
        call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                "params": {"name": "alpha__notify_changed", "arguments": {}}}
        assert "sent" in requests.post(url, headers=headers, json=call, timeout=30).text
        assert "notifications/tools/list_changed" in notifications_until(
            lines, "notifications/tools/list_changed")
    finally:
        stream.close()


def test_smoke_test_script_passes(deployment: Deployment) -> None:
    # The port, key and URL from the environment (METAMCP_PORT as `make run` is given it).
    env = child_env(METAMCP_PORT=str(deployment.gateway.port), METAMCP_API_KEY=deployment.key)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "test_client.py")],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("health", "token", "list servers", "initialize", "tools/list", "tools/call"):
        assert f"[ok] {step}" in result.stdout
    assert "all steps passed" in result.stdout
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "test_client.py"), "--api-key", "mcp_wrong",
         "--url", deployment.gateway.url],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "[FAIL] token" in bad.stdout
    refused = requests.post(deployment.gateway.url + "/api/v1/auth/token", json={"api_key": "mcp_wrong"}, timeout=30)
    assert f"[FAIL] token: HTTP {refused.status_code}: {refused.json()['message']}" in bad.stdout
    elsewhere = subprocess.run(  # METAMCP_URL wins over METAMCP_PORT
        [sys.executable, str(ROOT / "scripts" / "test_client.py")], capture_output=True, text=True, timeout=60,
        env={**env, "METAMCP_URL": deployment.gateway.url, "METAMCP_PORT": "1"})
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
