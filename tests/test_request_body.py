"""Hostile bodies against a live gunicorn: deep JSON, broken chunked framing, oversize chunked
bodies and odd JSON values get 400/413/422, never a 500 or a traceback (raw sockets where
the Flask test client cannot produce the framing)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from metamcp.json_depth import MAX_JSON_DEPTH
from metamcp.mcp.jsonrpc import PARSE_ERROR

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .upstreams import UpstreamProcess

LIMIT = 1024 * 1024  # METAMCP_MAX_BODY_BYTES, the default
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT_PARAMS = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes,
                timeout: float = 20.0, half_close: bool = False) -> Reply:
    """Send exactly these bytes after the head (then EOF if `half_close`); read one response
    (Content-Length framed)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode() + body)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading everything: the answer is still there
        data = b""
        while time.monotonic() < deadline:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                lines = data[:end].decode("latin-1").split("\r\n")
                found = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(found.get("content-length", "-1"))
                if 0 <= length <= len(data) - end - 4:
                    return Reply(int(lines[0].split()[1]), found, data[end + 4:end + 4 + length])
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
    raise AssertionError(f"no complete response to {method} {path}: {data[:300]!r}")


def chunked(*pieces: bytes, end: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + end


def nested(depth: int, inner: Any = 1) -> Any:
    for _ in range(depth):
        inner = {"k": inner}
    return inner


def deep_text(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@dataclass
class Setup:
    gateway: Gunicorn
    key: str
    namespace: str
    sse_stream: requests.Response
    message_path: str

    @property
    def port(self) -> int:
        return self.gateway.port

    def routes(self) -> list[tuple[str, dict[str, str]]]:
        """Every kind of route that reads a body, with the headers it needs to get that far."""
        auth = {"X-API-Key": self.key}
        json_type = {"Content-Type": "application/json"}
        return [
            ("/api/v1/auth/token", json_type),
            ("/api/v1/namespaces", {**json_type, **auth}),
            ("/mcp", {**MCP_HEADERS, **auth}),
            (self.message_path, json_type),
            ("/metamcp/open/api/up__echo", json_type),
        ]

    def no_traceback(self) -> None:
        log = self.gateway.output()
        assert "Traceback" not in log and "Internal error" not in log, log[-3000:]


@pytest.fixture(scope="module")
def setup(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    key = fresh_keys(database_url, admin="admin")["admin"]
    upstream = UpstreamProcess(name="up", json_response=True, extra_args=("--deep-tool",))
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="1", METAMCP_UPSTREAM_TIMEOUT="10")
    gateway = Gunicorn(env, free_port())
    stream = None
    try:
        upstream.start()
        gateway.wait_ready()
        auth = {"X-API-Key": key}

        def rest(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = requests.request(method, gateway.url + path, headers=auth, json=body, timeout=30)
            assert reply.status_code < 300, reply.text
            return reply.json()

        server = rest("POST", "/api/v1/mcp/servers", {"name": "up", "transport": "streamable_http",
                                                       "url": upstream.url})
        namespace = rest("POST", "/api/v1/namespaces", {"name": "ns"})["id"]
        rest("PUT", f"/api/v1/namespaces/{namespace}/servers/{server['id']}", {"status": "active"})
        rest("POST", "/api/v1/endpoints", {"name": "open", "namespace_id": namespace, "auth": {"api_key": False}})
        stream = requests.get(f"{gateway.url}/metamcp/open/sse", stream=True, timeout=30)
        lines = stream.iter_lines(decode_unicode=True)
        message_path = next(line[len("data: "):] for line in lines if line.startswith("data: "))
        yield Setup(gateway, key, namespace, stream, message_path)
    finally:
        if stream is not None:
            stream.close()
        gateway.stop()
        upstream.stop()
        os.unlink(gateway.log.name)


def _is_depth_refusal(reply: Reply) -> bool:
    body = reply.json()
    if "jsonrpc" in body:
        return body["error"]["code"] == PARSE_ERROR and str(MAX_JSON_DEPTH) in body["error"]["message"]
    return body["error"] == "bad_request" and str(MAX_JSON_DEPTH) in body["message"]


def test_json_nested_100000_deep_gets_400_on_every_route(setup: Setup) -> None:
    for body in (deep_text(100_000), b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        for path, headers in setup.routes():
            reply = raw_request(setup.port, "POST", path, {**headers, "Content-Length": str(len(body))}, body)
            assert reply.status == 400, (path, reply)
            assert _is_depth_refusal(reply), (path, reply.body)
    setup.no_traceback()


def test_depth_limit_is_exact(setup: Setup) -> None:
    """At the limit a body is parsed and handled; one level deeper it is refused."""
    url = setup.gateway.url
    for depth in (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1):
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {**INIT_PARAMS, "clientInfo": {"name": "t", "version": "1", "x": nested(depth - 3)}}}
        token = {"api_key": nested(depth - 1, "k")}
        tool_args = {"message": "hi", "pad": nested(depth - 1)}
        replies = [
            requests.post(url + "/mcp", headers={**MCP_HEADERS, "X-API-Key": setup.key}, json=init, timeout=30),
            requests.post(url + "/api/v1/auth/token", json=token, timeout=30),
            requests.post(url + "/metamcp/open/api/up__echo", json=tool_args, timeout=30),
        ]
        statuses = [reply.status_code for reply in replies]
        if depth == MAX_JSON_DEPTH:
            assert statuses == [200, 422, 200], [r.text[:300] for r in replies]
        else:
            assert statuses == [400, 400, 400]
            assert replies[0].json()["error"]["code"] == PARSE_ERROR
            assert all(str(MAX_JSON_DEPTH) in r.text for r in replies)
    setup.no_traceback()


@pytest.mark.parametrize("framing", [
    pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", id="bad-chunk-size"),
    pytest.param(b"2\r\n{}XX0\r\n\r\n", id="missing-chunk-terminator"),
    pytest.param(b"10\r\n{}", id="truncated"),
    pytest.param(b"2\r\n{}\r\n0\r\n", id="no-final-crlf"),
])
def test_invalid_chunked_framing_gets_400(setup: Setup, framing: bytes) -> None:
    for path, headers in setup.routes():
        # The client stops sending (EOF): a truncated body ends there.
        reply = raw_request(setup.port, "POST", path, {**headers, "Transfer-Encoding": "chunked"}, framing,
                            half_close=True)
        assert reply.status == 400, (path, reply)
        body = reply.json()
        message = body["error"]["message"] if "jsonrpc" in body else body["message"]
        assert "body" in message, message
    setup.no_traceback()


def test_chunked_body_over_the_limit_gets_413_and_at_the_limit_is_read_whole(setup: Setup) -> None:
    for path, headers in setup.routes():
        over = b" " * (LIMIT - 1) + b"{}"  # valid JSON, one byte over
        reply = raw_request(setup.port, "POST", path, {**headers, "Transfer-Encoding": "chunked"},
                            chunked(over[:LIMIT // 2], over[LIMIT // 2:]))
        assert reply.status == 413, (path, reply)
        assert b"too large" in reply.body.lower(), reply.body
    exact = b" " * (LIMIT - len(b'{"api_key":"mcp_nope"}')) + b'{"api_key":"mcp_nope"}'
    reply = raw_request(setup.port, "POST", "/api/v1/auth/token",
                        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                        chunked(exact[:1000], exact[1000:]))
    assert reply.status == 401, reply  # read whole, parsed, and the key checked
    setup.no_traceback()


def test_chunked_bodies_that_are_fine_still_work(setup: Setup) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": INIT_PARAMS}).encode()
    reply = raw_request(setup.port, "POST", "/mcp", {**MCP_HEADERS, "X-API-Key": setup.key,
                                                     "Transfer-Encoding": "chunked"},
                        chunked(body[:10], body[10:]))
    assert reply.status == 200 and reply.json()["id"] == 7
    body = json.dumps({"name": "chunked-ns"}).encode()
    reply = raw_request(setup.port, "POST", "/api/v1/namespaces",
                        {"Content-Type": "application/json", "X-API-Key": setup.key,
                         "Transfer-Encoding": "chunked"}, chunked(body[:5], body[5:]))
    assert reply.status == 201 and reply.json()["name"] == "chunked-ns"  # webargs read the same bytes


HOSTILE_BODIES = [
    b"\xff\xfe{}",
    b'{"a": "\\ud800"}',
    b'{"api_key": "\\udfff", "name": "\\ud800x"}',
    b"1e999999",
    b'{"api_key": 1e999999, "name": -1e999, "message": 1e400}',
    b"NaN",
    b'{"api_key": NaN, "x": Infinity}',
    b'{"name": "a", "name": "b", "api_key": "x", "api_key": "y"}',
    b'"a JSON string instead of an object"',
    b"[]",
    b"null",
    b"",
    b'{"name": "nul\\u0000", "description": "d\\u0000"}',
    b'{"name": "ok-ns-1", "description": "\\u0000"}',
    b'{"jsonrpc": "2.0", "id": ' + b"9" * 5000 + b', "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1e999, "method": "ping"}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", '
    b'"clientInfo": {"name": "\\u0000", "version": "\\u0000"}}}',
    b'{"jsonrpc": "2.0", "id": [1], "method": "tools/list"}',
    b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, 5, "x"]',
]


def test_hostile_bodies_never_reach_a_500(setup: Setup) -> None:
    seen = set()
    for path, headers in setup.routes():
        for body in HOSTILE_BODIES:
            reply = raw_request(setup.port, "POST", path, {**headers, "Content-Length": str(len(body))}, body)
            assert reply.status < 500, (path, body[:80], reply)
            seen.add(reply.status)
    assert 400 in seen and 422 in seen
    setup.no_traceback()


def test_deep_result_from_an_upstream_is_refused_not_crashed(setup: Setup) -> None:
    """An upstream's message nested deeper than the limit is not forwarded: the call fails
    with 502 (tool API) and the worker goes on serving."""
    url = setup.gateway.url + "/metamcp/open/api/up__deep"
    shallow = requests.post(url, json={"levels": MAX_JSON_DEPTH - 10}, timeout=30)
    assert shallow.status_code == 200, shallow.text
    refused = requests.post(url, json={"levels": MAX_JSON_DEPTH + 50}, timeout=30)
    assert refused.status_code == 502, refused.text
    assert refused.json()["error"] == "bad_gateway"
    again = requests.post(setup.gateway.url + "/metamcp/open/api/up__echo", json={"message": "still"}, timeout=30)
    assert again.status_code == 200 and "still" in again.text
    setup.no_traceback()


def test_deep_answer_on_a_shared_stdio_stream_fails_its_call_at_once(setup: Setup) -> None:
    """A stdio child's too-deep line is not parsed; its call fails at once (its id comes
    first on the line), not at the timeout, and the child keeps serving."""
    auth = {"X-API-Key": setup.key}
    url = setup.gateway.url + "/api/v1/mcp/servers"
    created = requests.post(url, headers=auth, timeout=30, json={
        "name": "deepstdio", "transport": "stdio", "command": sys.executable,
        "args": [str(Path(__file__).resolve().parent / "servers" / "tools_only_server.py"), "--deep"]})
    assert created.status_code == 201, created.text
    execute = f"{url}/{created.json()['id']}/tools/{{}}/execute"
    try:
        fine = requests.post(execute.format("deep"), headers=auth, json={"arguments": {"levels": 20}}, timeout=30)
        assert fine.status_code == 200, fine.text
        assert json.dumps(fine.json()["structuredContent"]["value"]) == "[" * 20 + "]" * 20
        started = time.monotonic()
        refused = requests.post(execute.format("deep"), headers=auth, timeout=30,
                                json={"arguments": {"levels": 50_000}})
        assert refused.status_code in (422, 502), refused.text
        assert str(MAX_JSON_DEPTH) in refused.json()["message"]
        assert time.monotonic() - started < 8, "the call waited for its timeout"
        shout = requests.post(execute.format("shout"), headers=auth, json={"arguments": {"text": "ok"}}, timeout=30)
        assert shout.status_code == 200 and shout.json()["content"][0]["text"] == "OK"
    finally:
        requests.delete(f"{url}/{created.json()['id']}", headers=auth, timeout=30)
    setup.no_traceback()
