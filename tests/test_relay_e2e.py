"""Requests from upstreams to their client (elicitation, sampling, roots, ping) relayed through
live gunicorn to the official SDK client, over Streamable HTTP, legacy SSE and stdio upstreams;
and a client's answer POSTed to another gateway process than the one holding the call."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from mcp import Client, types
from mcp.shared.exceptions import MCPError

from metamcp.mcp.protocol import REQUEST_TIMEOUT, SESSION_HEADER

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .mcp_client import run_client
from .upstreams import SERVER, UpstreamProcess

UPSTREAM_TIMEOUT = 4.0  # the relay's deadline is 90% of it
SERVERS = ("http", "sse", "stdio")


class Gateways:
    def __init__(self, first: Gunicorn, second: Gunicorn, key: str, upstream_log: Path) -> None:
        self.first, self.second, self.key = first, second, key
        self.upstream_log = upstream_log

    def client(self, body: Any, **options: Any) -> Any:
        return run_client(f"{self.first.url}/mcp", self.key, body, **options)


@pytest.fixture(scope="module")
def gateways(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """Two gateway processes (one worker each) on one database, in front of one upstream per
    transport."""
    key = fresh_keys(database_url, relay="admin")["relay"]
    log_file = tmp_path_factory.mktemp("upstream") / "http.log"
    upstreams = [UpstreamProcess(name="http", log_file=log_file), UpstreamProcess(name="sse", transport="sse")]
    env = child_env(DATABASE_URL=database_url, METAMCP_WORKERS="1",
                    METAMCP_UPSTREAM_TIMEOUT=str(UPSTREAM_TIMEOUT), METAMCP_KEEPALIVE_SECONDS="0.5")
    started: list[Gunicorn] = []
    try:
        for upstream in upstreams:
            upstream.start()
        for _ in range(2):
            data = str(tmp_path_factory.mktemp("data"))
            started.append(Gunicorn({**env, "METAMCP_DATA_DIR": data}, free_port()))
        for gateway in started:
            gateway.wait_ready()
        servers = [
            {"name": "http", "transport": "streamable_http", "url": upstreams[0].url},
            {"name": "sse", "transport": "sse", "url": upstreams[1].url},
            {"name": "stdio", "transport": "stdio", "command": sys.executable,
             "args": [str(SERVER), "--transport", "stdio", "--name", "stdio"]},
        ]
        def rest(path: str, body: dict[str, Any], method: str = "POST") -> dict[str, Any]:
            response = requests.request(method, f"{started[0].url}/api/v1{path}", json=body,
                                        headers={"X-API-Key": key}, timeout=30)
            assert response.status_code in (200, 201), response.text
            return dict(response.json())

        ids = [rest("/mcp/servers", server)["id"] for server in servers]
        namespace = rest("/namespaces", {"name": "relayed"})["id"]
        for server_id in ids:
            rest(f"/namespaces/{namespace}/servers/{server_id}", {"status": "active"}, "PUT")
        rest("/endpoints", {"name": "relayed", "namespace_id": namespace, "auth": {"api_key": True}})
        yield Gateways(started[0], started[1], key, log_file)
    finally:
        for gateway in started:
            gateway.stop()
        for upstream in upstreams:
            upstream.stop()


def text(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("server", SERVERS)
def test_elicitation_answered_by_the_client_reaches_the_upstream(gateways: Gateways, server: str) -> None:
    asked: list[str] = []

    async def elicit(_context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async def body(client: Client) -> types.CallToolResult:
        return await client.call_tool(f"{server}__ask_user", {"question": "Who are you?"})

    result = gateways.client(body, elicitation_callback=elicit)
    assert asked == ["Who are you?"]
    assert not result.is_error and text(result) == "accept: Grace"


@pytest.mark.parametrize("server", SERVERS)
def test_sampling_answered_by_the_client_reaches_the_upstream(gateways: Gateways, server: str) -> None:
    async def sample(_context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        assert isinstance(prompt, types.TextContent)
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text=prompt.text.upper()))

    async def body(client: Client) -> types.CallToolResult:
        return await client.call_tool(f"{server}__ask_model", {"prompt": "hello"})

    result = gateways.client(body, sampling_callback=sample)
    assert not result.is_error and text(result) == "HELLO"


@pytest.mark.parametrize("server", SERVERS)
def test_roots_come_from_the_calling_client(gateways: Gateways, server: str) -> None:
    async def roots(_context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def body(client: Client) -> types.CallToolResult:
        return await client.call_tool(f"{server}__ask_roots", {})

    result = gateways.client(body, list_roots_callback=roots)
    assert not result.is_error and text(result) == "file:///work/project"


@pytest.mark.parametrize("server", SERVERS)
def test_a_legacy_sse_client_is_asked_too(gateways: Gateways, server: str) -> None:
    """A 2024-11-05 client on an endpoint's HTTP+SSE transport gets the request on its stream."""
    async def elicit(_context: Any, _params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Linus"})

    async def body(client: Client) -> types.CallToolResult:
        return await client.call_tool(f"{server}__ask_user", {"question": "Who are you?"})

    result = run_client(f"{gateways.first.url}/metamcp/relayed/sse", gateways.key, body, sse=True,
                        elicitation_callback=elicit)
    assert not result.is_error and text(result) == "accept: Linus"


def test_a_request_outside_any_call_goes_to_a_get_stream(gateways: Gateways) -> None:
    """The upstream asks for roots after its call has ended, on its own standing stream: the
    request reaches the session's GET stream and the client's answer reaches the upstream."""
    async def roots(_context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///later")])

    async def body(client: Client) -> bool:
        await client.call_tool("http__ask_roots_later", {})
        for _ in range(100):  # bounded: 10 s
            if "roots file:///later" in gateways.upstream_log.read_text():
                return True
            await anyio.sleep(0.1)
        return False

    assert gateways.client(body, list_roots_callback=roots)


@pytest.mark.parametrize("server", SERVERS)
def test_a_client_without_the_capability_gets_the_upstream_an_error_at_once(gateways: Gateways,
                                                                              server: str) -> None:
    """The SDK server raises the refusal it got; the client sees it as the call's error."""
    async def body(client: Client) -> str:
        try:
            await client.call_tool(f"{server}__ask_user", {"question": "Who are you?"})
        except MCPError as e:
            return str(e)
        return "no error"

    started = time.monotonic()
    error = gateways.client(body)  # no elicitation_callback: the capability is not declared
    assert "did not declare the elicitation capability" in error
    assert time.monotonic() - started < UPSTREAM_TIMEOUT


def test_an_unanswered_request_ends_at_the_deadline(gateways: Gateways) -> None:
    """The client declares elicitation but never answers: the upstream gets a timeout error at
    the deadline, and the call ends with it instead of hanging."""
    session = _open_session(gateways.first, gateways.key, {"elicitation": {}})
    started = time.monotonic()
    events = _call(gateways.first, gateways.key, session, "http__ask_user", {"question": "Anyone?"})
    request = next(events)
    assert request["method"] == "elicitation/create" and str(request["id"]).startswith("mm.")
    final = next(events)
    elapsed = time.monotonic() - started
    assert final["id"] == 7 and final["error"]["code"] == REQUEST_TIMEOUT, final
    assert "did not answer" in final["error"]["message"]
    assert UPSTREAM_TIMEOUT * 0.8 < elapsed < UPSTREAM_TIMEOUT * 1.5


def test_an_answer_posted_to_another_process_reaches_the_upstream(gateways: Gateways) -> None:
    """The call runs in the first gateway process; the client POSTs its answer to the second,
    which hands it over through the database."""
    session = _open_session(gateways.first, gateways.key, {"elicitation": {}})
    events = _call(gateways.first, gateways.key, session, "http__ask_user", {"question": "Name?"})
    request = next(events)
    answer = {"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept", "content": {"name": "Ada"}}}
    posted = requests.post(f"{gateways.second.url}/mcp", json=answer, timeout=10,
                           headers=_headers(gateways.key, session))
    assert posted.status_code == 202
    final = next(events)
    assert final["result"]["isError"] is False and final["result"]["content"][0]["text"] == "accept: Ada"


def test_an_answer_from_another_session_is_ignored(gateways: Gateways) -> None:
    session = _open_session(gateways.first, gateways.key, {"elicitation": {}})
    intruder = _open_session(gateways.first, gateways.key, {"elicitation": {}})
    events = _call(gateways.first, gateways.key, session, "http__ask_user", {"question": "Name?"})
    request = next(events)
    forged = {"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept", "content": {"name": "Eve"}}}
    assert requests.post(f"{gateways.first.url}/mcp", json=forged, timeout=10,
                         headers=_headers(gateways.key, intruder)).status_code == 202
    answer = {**forged, "result": {"action": "accept", "content": {"name": "Ada"}}}
    assert requests.post(f"{gateways.first.url}/mcp", json=answer, timeout=10,
                         headers=_headers(gateways.key, session)).status_code == 202
    assert next(events)["result"]["content"][0]["text"] == "accept: Ada"


# --- raw HTTP, to choose which process gets which message --------------------------------------


def _headers(key: str, session: str | None = None) -> dict[str, str]:
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    if session is not None:
        headers[SESSION_HEADER] = session
    return headers


def _open_session(gateway: Gunicorn, key: str, capabilities: dict[str, Any]) -> str:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": capabilities,
                       "clientInfo": {"name": "raw", "version": "1"}}}
    response = requests.post(f"{gateway.url}/mcp", json=init, headers=_headers(key), timeout=10)
    assert response.status_code == 200, response.text
    session = response.headers[SESSION_HEADER]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert requests.post(f"{gateway.url}/mcp", json=initialized, headers=_headers(key, session),
                         timeout=10).status_code == 202
    return session


def _call(gateway: Gunicorn, key: str, session: str, tool: str, arguments: dict[str, Any]
          ) -> Iterator[dict[str, Any]]:
    """The messages of one tools/call's SSE stream (id 7), as they come."""
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    response = requests.post(f"{gateway.url}/mcp", json=call, headers=_headers(key, session),
                             stream=True, timeout=(5, 15))
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")

    def messages() -> Iterator[dict[str, Any]]:
        with response:
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    return messages()
