"""/mcp end to end: live gunicorn (2 workers), real SDK upstreams, the SDK as the client."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference

from metamcp import crypto, repository
from metamcp.db import Database

from .conftest import Gunicorn, child_env, free_port
from .mcp_client import list_all, run_client
from .upstreams import UpstreamProcess

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
    upstreams = {
        "alpha": UpstreamProcess(name="alpha", page_size=2),          # SSE replies, paginates
        "beta": UpstreamProcess(name="beta", json_response=True),     # JSON replies
        "gamma": UpstreamProcess(name="gamma", transport="sse"),      # legacy HTTP+SSE
    }
    hang, stop_hang = _hanging_listener()
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
        for upstream in upstreams.values():
            upstream.start()
        gateway.wait_ready()
        deployment = Deployment(gateway, keys[0], keys[1], upstreams, db)
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
        await client.send_ping()
        await client.set_logging_level("warning")
        return {"version": client.protocol_version, "tools": tools, "add": add, "beta": echo_beta,
                "gamma": echo_gamma, "prompts": prompts, "prompt": prompt, "resources": resources,
                "read": read, "templates": templates, "completion": completion}

    got = deployment.client(body, mode=mode)
    assert got["version"] == "2025-11-25"
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
    async def body(client: Client) -> int:
        try:
            await client.call_tool("alpha__slow", {"seconds": 6})
        except MCPError as e:
            return e.error.code
        return 0

    assert deployment.client(body) == -32001


def test_down_and_hung_upstreams_are_skipped_and_reported(deployment: Deployment) -> None:
    async def body(client: Client) -> list[str]:
        return names(await list_all(client, "tools"))

    assert "alpha__echo" in deployment.client(body)
    health = deployment.rest("GET", "/health").json()
    statuses = {u["name"]: u for u in health["upstreams"]}
    assert set(statuses) == {"alpha", "beta", "gamma", "down", "hung"}


def test_upstream_restart_is_invisible_to_the_client(deployment: Deployment) -> None:
    async def body(client: Client) -> tuple[str, str]:
        before = await client.call_tool("alpha__echo", {"message": "one"})
        deployment.upstreams["alpha"].restart()
        after = await client.call_tool("alpha__echo", {"message": "two"})
        return before.content[0].text, after.content[0].text

    before, after = deployment.client(body)
    assert "one" in before and "two" in after
