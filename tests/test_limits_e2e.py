"""Limits and capacity end to end: live gunicorn, real SDK upstreams, raw HTTP clients.

429 with Retry-After for a key's rate (MCP and REST), its in-flight calls and an address's
failed authentications; 503 with Retry-After when a worker's long-call budget is spent while
short requests still pass; 200 standing GET streams all open and all hear list_changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from metamcp.db import Database
from metamcp.mcp.protocol import SERVER_BUSY, TOO_MANY_REQUESTS

from .conftest import Gunicorn, child_env
from .upstreams import UpstreamProcess, start_upstream  # noqa: F401 - fixture

ACCEPT = "application/json, text/event-stream"
MakeKey = Callable[..., tuple[int, str]]


def mcp_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key, "Accept": ACCEPT, "Content-Type": "application/json"}


def initialize(url: str, key: str) -> requests.Response:
    return requests.post(url + "/mcp", headers=mcp_headers(key), timeout=30, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "limits", "version": "1"}}})


def open_session(url: str, key: str) -> dict[str, str]:
    reply = initialize(url, key)
    assert reply.status_code == 200, reply.text
    return {**mcp_headers(key), "Mcp-Session-Id": reply.headers["Mcp-Session-Id"],
            "MCP-Protocol-Version": "2025-11-25"}


def call(url: str, headers: dict[str, str], name: str, arguments: dict[str, Any],
         stream: bool = False) -> requests.Response:
    return requests.post(url + "/mcp", headers=headers, timeout=60, stream=stream, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})


def final_message(reply: requests.Response) -> dict[str, Any]:
    if reply.headers.get("Content-Type", "").startswith("text/event-stream"):
        for line in reply.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                message = json.loads(line[5:])
                if "method" not in message:
                    return message
        raise AssertionError("the stream ended without a response")
    return reply.json()


@pytest.fixture
def gateway(database_url: str, db: Database, tmp_path: Path,
            start_gunicorn: Callable[..., Gunicorn]) -> Callable[..., Gunicorn]:
    """Start a gateway on the test database with the given settings."""

    def start(**settings: str) -> Gunicorn:
        env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path / "data"),
                        METAMCP_LOG_LEVEL="WARNING", **settings)
        return start_gunicorn(env)

    return start


@pytest.fixture
def slow_upstream(start_upstream: Callable[..., UpstreamProcess]) -> UpstreamProcess:  # noqa: F811
    return start_upstream("slowpoke")


def register(url: str, key: str, upstream: UpstreamProcess, name: str = "slowpoke") -> None:
    reply = requests.post(url + "/api/v1/mcp/servers", headers={"X-API-Key": key}, timeout=30, json={
        "name": name, "transport": "streamable_http", "url": upstream.url})
    assert reply.status_code == 201, reply.text


def assert_refusal(reply: requests.Response, status: int, code: int) -> None:
    assert reply.status_code == status, reply.text
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.json()["error"]["code"] == code


def test_rate_limit_429_on_rest_and_mcp_across_workers(gateway: Callable[..., Gunicorn],
                                                       make_key: MakeKey) -> None:
    server = gateway(METAMCP_WORKERS="2", METAMCP_RATE_LIMIT="20")
    _, rest_key = make_key("rest")
    started = time.monotonic()
    statuses = [requests.get(server.url + "/api/v1/mcp/servers", headers={"X-API-Key": rest_key},
                             timeout=30) for _ in range(30)]
    allowed = 20 + (time.monotonic() - started) / 3 + 1  # the bucket refills one every 3 s
    ok = [r for r in statuses if r.status_code == 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert len(ok) + len(limited) == 30
    assert 20 <= len(ok) <= allowed  # one bucket for the key, whichever worker answers
    assert limited[0].json()["error"] == "too_many_requests"
    assert 1 <= int(limited[0].headers["Retry-After"]) <= 3

    _, mcp_key = make_key("mcp")
    replies = [initialize(server.url, mcp_key) for _ in range(30)]
    refused = [r for r in replies if r.status_code == 429]
    assert refused, [r.status_code for r in replies]
    assert_refusal(refused[0], 429, TOO_MANY_REQUESTS)
    # Another key is not affected.
    _, fresh = make_key("fresh")
    assert initialize(server.url, fresh).status_code == 200


def test_in_flight_calls_per_key_429_then_free_again(gateway: Callable[..., Gunicorn], make_key: MakeKey,
                                                     slow_upstream: UpstreamProcess) -> None:
    server = gateway(METAMCP_WORKERS="2", METAMCP_MAX_INFLIGHT_PER_KEY="2", METAMCP_KEEPALIVE_SECONDS="0.5")
    _, admin = make_key("admin")
    register(server.url, admin, slow_upstream)
    _, key = make_key("busy")
    headers = open_session(server.url, key)
    # Each answer's headers come with the first keep-alive: then the call is in flight.
    slow = [call(server.url, headers, "slowpoke__slow", {"seconds": 60}, stream=True) for _ in range(2)]
    try:
        assert [r.status_code for r in slow] == [200, 200]
        refused = call(server.url, headers, "slowpoke__echo", {"message": "x"})
        assert_refusal(refused, 429, TOO_MANY_REQUESTS)
        assert "in flight" in refused.json()["error"]["message"]
        # Another key still calls.
        _, other = make_key("other")
        reply = call(server.url, open_session(server.url, other), "slowpoke__echo", {"message": "y"})
        assert final_message(reply)["result"]["content"][0]["text"] == "slowpoke: y"
    finally:
        for reply in slow:
            reply.close()
    deadline = time.monotonic() + 30  # the gateway notices the hang-ups and ends the calls
    while True:
        reply = call(server.url, headers, "slowpoke__echo", {"message": "again"})
        if reply.status_code == 200:
            break
        assert reply.status_code == 429 and time.monotonic() < deadline, reply.text
        time.sleep(0.2)
    assert final_message(reply)["result"]["content"][0]["text"] == "slowpoke: again"


def test_auth_failures_per_address_429_before_the_credential_is_checked(
        gateway: Callable[..., Gunicorn], make_key: MakeKey) -> None:
    server = gateway(METAMCP_WORKERS="2", METAMCP_AUTH_FAILURE_LIMIT="3")
    _, good = make_key("good")
    token_url = server.url + "/api/v1/auth/token"
    bad = [requests.post(token_url, json={"api_key": f"mcp_{'x' * 40}{n}"}, timeout=30) for n in range(10)]
    assert [r.status_code for r in bad[:3]] == [401, 401, 401]
    assert {r.status_code for r in bad[3:]} == {429}
    assert bad[3].json()["error"] == "too_many_requests"
    assert 1 <= int(bad[3].headers["Retry-After"]) <= 20
    # While the address is blocked, a correct key is refused too: otherwise a guesser would
    # learn which guess was right from the one answer that is not 429.
    assert requests.post(token_url, json={"api_key": good}, timeout=30).status_code == 429
    admin = requests.get(server.url + "/api/v1/mcp/servers", headers={"X-API-Key": good}, timeout=30)
    assert admin.status_code == 429 and admin.json()["error"] == "too_many_requests"
    assert "Retry-After" in admin.headers
    assert_refusal(initialize(server.url, good), 429, TOO_MANY_REQUESTS)
    assert_refusal(initialize(server.url, "not-a-key"), 429, TOO_MANY_REQUESTS)


def test_saturated_worker_answers_503_at_once_and_short_requests_still_pass(
        gateway: Callable[..., Gunicorn], make_key: MakeKey, slow_upstream: UpstreamProcess) -> None:
    # One worker of 4 threads, 2 reserved: two long calls fill its budget.
    server = gateway(METAMCP_WORKERS="1", METAMCP_THREADS="4", METAMCP_RESERVED_THREADS="2",
                     METAMCP_KEEPALIVE_SECONDS="0.5")
    _, key = make_key("sat")
    register(server.url, key, slow_upstream)
    headers = open_session(server.url, key)
    slow = [call(server.url, headers, "slowpoke__slow", {"seconds": 60}, stream=True) for _ in range(2)]
    try:
        assert [r.status_code for r in slow] == [200, 200]
        assert_refusal(call(server.url, headers, "slowpoke__echo", {"message": "x"}), 503, SERVER_BUSY)
        stream = requests.get(server.url + "/mcp", headers={**headers, "Accept": "text/event-stream"},
                              timeout=30)
        assert_refusal(stream, 503, SERVER_BUSY)
        listing = requests.post(server.url + "/mcp", headers=headers, timeout=30,
                                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert listing.status_code == 200
        assert any(t["name"] == "slowpoke__echo" for t in listing.json()["result"]["tools"])
        assert requests.get(server.url + "/api/v1/mcp/servers", headers={"X-API-Key": key},
                            timeout=30).status_code == 200
    finally:
        for reply in slow:
            reply.close()


def test_200_get_streams_all_open_and_all_hear_list_changed(
        gateway: Callable[..., Gunicorn], make_key: MakeKey, slow_upstream: UpstreamProcess) -> None:
    clients = 200
    server = gateway(METAMCP_WORKERS="2", METAMCP_KEEPALIVE_SECONDS="1")
    _, key = make_key("listeners")
    sessions = [open_session(server.url, key) for _ in range(clients)]
    deadline = time.monotonic() + 120

    def listen(headers: dict[str, str]) -> Generator[str | int, None, None]:
        """Yields the status, then the stream's lines."""
        with requests.get(server.url + "/mcp", headers={**headers, "Accept": "text/event-stream"},
                          stream=True, timeout=30) as reply:
            yield reply.status_code
            if reply.status_code == 200:
                yield from reply.iter_lines(decode_unicode=True)

    streams = [listen(headers) for headers in sessions]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        statuses = list(pool.map(next, streams))
        assert statuses == [200] * clients  # no 405, no 503: every client has its stream
        assert set(pool.map(next, streams)) == {": stream open"}
        register(server.url, key, slow_upstream)

        def heard(lines: Generator[str | int, None, None]) -> bool:
            for line in lines:
                if isinstance(line, str) and "notifications/tools/list_changed" in line:
                    return True
                if time.monotonic() > deadline:
                    return False
            return False

        try:
            assert all(pool.map(heard, streams))
        finally:
            for lines in streams:
                lines.close()


def test_in_flight_cap_holds_on_the_endpoint_rest_tool_api(gateway: Callable[..., Gunicorn], make_key: MakeKey,
                                                           slow_upstream: UpstreamProcess) -> None:
    server = gateway(METAMCP_WORKERS="2", METAMCP_MAX_INFLIGHT_PER_KEY="1")
    _, key = make_key("rest-tools")
    auth = {"X-API-Key": key}

    def rest(method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, server.url + path, headers=auth, timeout=90, **kwargs)

    server_id = rest("POST", "/api/v1/mcp/servers", json={
        "name": "slowpoke", "transport": "streamable_http", "url": slow_upstream.url}).json()["id"]
    namespace = rest("POST", "/api/v1/namespaces", json={"name": "tools"}).json()["id"]
    assert rest("PUT", f"/api/v1/namespaces/{namespace}/servers/{server_id}", json={"status": "active"}).status_code == 200
    assert rest("POST", "/api/v1/endpoints", json={"name": "tools", "namespace_id": namespace}).status_code == 201
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(max_workers=1) as pool:
        refused: requests.Response | None = None
        while refused is None:
            assert time.monotonic() < deadline, "the slow call was never seen in flight"
            # Until the slow call is in flight, short ones pass; a slow call that ended before it
            # was seen (e.g. its worker was still loading the new endpoint) is started again.
            slow = pool.submit(rest, "POST", "/metamcp/tools/api/slowpoke__slow", json={"seconds": 5})
            while not slow.done():
                reply = rest("POST", "/metamcp/tools/api/slowpoke__echo", json={"message": "x"})
                if reply.status_code == 429:
                    refused = reply
                    break
                assert reply.status_code in (200, 404) and time.monotonic() < deadline, reply.text
                time.sleep(0.1)
        assert refused is not None and refused.json()["error"] == "too_many_requests"
        assert int(refused.headers["Retry-After"]) >= 1
        assert slow.result().status_code == 200
    assert rest("POST", "/metamcp/tools/api/slowpoke__echo", json={"message": "x"}).status_code == 200
