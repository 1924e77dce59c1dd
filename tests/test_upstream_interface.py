"""The Upstream interface: one RPC error class, transport state without getattr, no cycles."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import pytest

from metamcp.addresses import AddressPolicy
from metamcp.mcp.jsonrpc import INTERNAL_ERROR, RpcError
from metamcp.mcp.upstream.call import UpstreamError, result_of
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.http import HttpUpstream
from metamcp.mcp.upstream.interface import Upstream
from metamcp.mcp.upstream.legacy_sse import LegacySseUpstream
from metamcp.mcp.upstream.stdio import StdioUpstream
from metamcp.mcp.upstream.streamable import StreamableHttpUpstream

from .conftest import ROOT
from .upstreams import server_config

TIMEOUTS = {"connect_timeout": 1.0, "read_timeout": 1.0}


def test_an_error_answer_raises_the_one_rpc_error_class() -> None:
    with pytest.raises(RpcError) as caught:
        result_of({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad", "data": [1]}})
    assert (caught.value.code, caught.value.message, caught.value.data) == (-32602, "bad", [1])
    with pytest.raises(RpcError) as odd:
        result_of({"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}})
    assert (odd.value.code, odd.value.message) == (INTERNAL_ERROR, "upstream error")
    assert result_of({"jsonrpc": "2.0", "id": 1, "result": {"a": 1}}) == {"a": 1}


@pytest.fixture
def made() -> Iterator[list[Upstream]]:
    clients: list[Upstream] = []
    yield clients
    for client in clients:
        client.close()


@pytest.mark.parametrize(("transport", "kind"), [
    ("streamable_http", StreamableHttpUpstream), ("sse", LegacySseUpstream), ("stdio", StdioUpstream)])
def test_the_factory_picks_the_transport_and_state_needs_no_getattr(
        made: list[Upstream], transport: str, kind: type[Upstream]) -> None:
    config = server_config("one", "http://127.0.0.1:9/mcp", transport)
    if transport == "stdio":
        config = dataclasses.replace(config, url=None, command=sys.executable)
    # The gateway passes the address policy to every transport; stdio (no connections) ignores it.
    client = create_upstream(config, policy=AddressPolicy(), **TIMEOUTS)
    made.append(client)
    assert type(client) is kind and client.name == "one" and client.server_info is None
    if isinstance(client, HttpUpstream):
        assert client.state() is None and client.stderr_lines() == []
    else:  # nothing started yet: a child is only spawned by the first request
        assert client.state() == {"running": False, "pid": None, "restarts": 0, "last_error": None}
        assert client.stderr_lines() == []


def test_http_transports_need_a_url_and_unknown_transports_are_refused() -> None:
    with pytest.raises(UpstreamError, match="no URL configured"):
        create_upstream(server_config("nourl", "", "streamable_http"), **TIMEOUTS)
    with pytest.raises(UpstreamError, match="not supported"):
        create_upstream(server_config("odd", "http://127.0.0.1:9/", "carrier-pigeon"), **TIMEOUTS)


def test_the_interface_imports_none_of_its_transports() -> None:
    script = ("import sys\nimport metamcp.mcp.upstream.interface\n"
              "print(sorted(m for m in sys.modules if m.startswith('metamcp.mcp.upstream.')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['metamcp.mcp.upstream.call', 'metamcp.mcp.upstream.interface']"
