"""Upstreams that misbehave (scripted HTTP servers on 127.0.0.1): each gets a clear UpstreamError."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from metamcp.mcp.upstream.call import UpstreamError, UpstreamTimeout
from metamcp.mcp.upstream.factory import create_upstream

from .upstreams import server_config

#: (status, content type, body) for every request of one scripted server.
Reply = tuple[int, str, bytes]


@pytest.fixture
def scripted() -> Iterator[Callable[[Reply], str]]:
    """scripted(reply) -> the base URL of a server answering every request with `reply`."""
    servers: list[ThreadingHTTPServer] = []

    def start(reply: Reply) -> str:
        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, kind, body = reply
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = answer

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def failure(url: str, transport: str = "streamable_http", read_timeout: float = 5.0) -> UpstreamError:
    upstream = create_upstream(server_config("odd", url, transport), connect_timeout=1,
                               read_timeout=read_timeout)
    try:
        with pytest.raises(UpstreamError) as raised:
            upstream.request("tools/list")
        return raised.value
    finally:
        upstream.close()


def initialize_result(version: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": {
        "protocolVersion": version, "capabilities": {}, "serverInfo": {"name": "odd", "version": "1"}}}).encode()


@pytest.mark.parametrize(("reply", "expected"), [
    ((500, "text/plain", b"boom"), "HTTP 500 while initializing"),
    ((200, "text/html", b"<html></html>"), "(text/html) to a request while initializing"),
    ((307, "text/plain", b""), "redirected (HTTP 307) while initializing"),
    ((200, "application/json", b"not json"), "invalid JSON-RPC message while initializing"),
    ((200, "application/json", b'{"jsonrpc": "2.0", "id": 99, "result": {}}'), "another message"),
    ((200, "application/json", initialize_result("1999-01-01")), "unsupported protocol version"),
])
def test_a_streamable_upstream_answering_nonsense(reply: Reply, expected: str, scripted: Any) -> None:
    error = failure(scripted(reply) + "/mcp?token=SECRET")
    assert expected in error.message and "'odd'" in error.message
    assert "SECRET" not in error.message and "127.0.0.1" not in error.message  # no URL, no secret


def test_a_legacy_endpoint_on_another_origin_is_refused(scripted: Any) -> None:
    stream = b"event: endpoint\ndata: http://127.0.0.2:9/messages/?session_id=x\n\n"
    error = failure(scripted((200, "text/event-stream", stream)) + "/sse", "sse")
    assert "another origin" in error.message


def test_a_legacy_stream_that_is_not_one(scripted: Any) -> None:
    error = failure(scripted((200, "application/json", b"{}")) + "/sse", "sse")
    assert "(application/json) while opening the event stream" in error.message


def test_a_hung_upstream_times_out() -> None:
    with socket.socket() as hung:  # accepts connections (the kernel's backlog), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        start = time.monotonic()
        error = failure(f"http://127.0.0.1:{hung.getsockname()[1]}/mcp", read_timeout=0.5)
    assert isinstance(error, UpstreamTimeout) and "no data for 0.5s" in error.message
    assert time.monotonic() - start < 2


def test_calls_queued_behind_a_failing_initialize_share_its_failure() -> None:
    """Eight first calls to a hung upstream cost one timeout, not eight in turn."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        upstream = create_upstream(server_config("hung", f"http://127.0.0.1:{hung.getsockname()[1]}/mcp"),
                                   connect_timeout=1, read_timeout=0.5)

        def first_call(_: int) -> Exception | None:
            try:
                upstream.request("ping")
            except UpstreamError as e:
                return e
            return None

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            errors = list(pool.map(first_call, range(8)))
        upstream.close()
    assert all(isinstance(e, UpstreamTimeout) for e in errors)
    assert time.monotonic() - start < 1.5
