"""scripts/example_server.py: the two example backends, checked through a real MCP client."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metamcp.mcp.jsonrpc import RpcError
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.interface import Upstream
from metamcp.servers import ServerConfig

from .upstreams import EXAMPLE_SERVER, UpstreamProcess


def connect(process: UpstreamProcess) -> Upstream:
    config = ServerConfig(uuid.uuid4(), "example", "streamable_http", process.url, None, [], {},
                          None, {}, None, True)
    return create_upstream(config, connect_timeout=5, read_timeout=10)


@pytest.fixture(params=["default", "files"])
def example(request: pytest.FixtureRequest) -> Iterator[tuple[str, Upstream]]:
    process = UpstreamProcess("example", script=EXAMPLE_SERVER,
                              extra_args=("--profile", request.param)).start()
    upstream = connect(process)
    try:
        yield request.param, upstream
    finally:
        upstream.close()
        process.stop()


def text(result: dict) -> str:
    return result["content"][0]["text"]


def test_profiles(example: tuple[str, Upstream]) -> None:
    profile, upstream = example
    tools = {t["name"] for t in upstream.list_all("tools/list", "tools")}
    call = upstream.request
    if profile == "default":
        assert tools == {"echo", "add", "uppercase", "reverse", "timestamp"}
        assert text(call("tools/call", {"name": "echo", "arguments": {"message": "hi"}})) == "hi"
        assert text(call("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})) == "5"
        assert text(call("tools/call", {"name": "reverse", "arguments": {"text": "abc"}})) == "cba"
        return
    assert tools == {"read_file", "write_file", "list_files", "parse_json", "base64_encode",
                     "base64_decode", "word_count", "get_config"}
    written = call("tools/call", {"name": "write_file", "arguments": {"path": "a.txt", "content": "x y z"}})
    assert not written.get("isError")
    assert text(call("tools/call", {"name": "read_file", "arguments": {"path": "a.txt"}})) == "x y z"
    escape = call("tools/call", {"name": "read_file", "arguments": {"path": "../../etc/passwd"}})
    assert escape["isError"] is True
    assert "uri" in upstream.list_all("resources/list", "resources")[0]
    config = call("resources/read", {"uri": "config://server"})
    assert json.loads(config["contents"][0]["text"])["profile"] == "files"
    prompts = {p["name"] for p in upstream.list_all("prompts/list", "prompts")}
    assert prompts == {"code_review", "summarize", "explain"}
    review = call("prompts/get", {"name": "code_review", "arguments": {"code": "print(1)"}})
    assert "print(1)" in json.dumps(review)
    with pytest.raises(RpcError):
        call("resources/read", {"uri": "file://missing.txt"})


def test_files_profile_removes_its_sandbox_on_exit(tmp_path: Path) -> None:
    process = UpstreamProcess("example", script=EXAMPLE_SERVER, extra_args=("--profile", "files")).start()
    upstream = connect(process)
    try:
        config = upstream.request("resources/read", {"uri": "config://server"})
        sandbox = Path(json.loads(config["contents"][0]["text"])["sandbox"])
        assert (sandbox / "welcome.txt").is_file()
    finally:
        upstream.close()
        process.stop()  # SIGTERM, as a service manager stops it
    assert process.proc is not None and process.proc.returncode is not None
    assert not sandbox.exists()


def test_help_shows_defaults() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE_SERVER), "--help"], capture_output=True, text=True,
                            timeout=30)
    help_text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "--host HOST address to listen on (HTTP transports; default: 127.0.0.1)" in help_text
    assert "--port PORT port to listen on (HTTP transports; default: 3001)" in help_text
