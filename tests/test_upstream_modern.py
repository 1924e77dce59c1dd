"""The upstream clients speaking 2026-07-28: the server/discover probe and its outcome, stateless
requests (headers, `_meta`, x-mcp-header), subscriptions/listen, and the 2025 fallback, against
real SDK servers over loopback HTTP and stdio."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metamcp.mcp.headers import encode, header_map, request_headers
from metamcp.mcp.protocol import (
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_SUBSCRIPTION,
    META_VERSION,
)
from metamcp.mcp.upstream.call import UpstreamError
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.interface import ClientMeta, Upstream
from metamcp.mcp.upstream.stdio import StdioUpstream
from metamcp.mcp.upstream.streamable import StreamableHttpUpstream
from metamcp.servers import ServerConfig

from .upstreams import SERVER, Log, UpstreamProcess
from .upstreams import start_upstream as start_upstream  # noqa: F401 - the fixture

MODERN_CLIENT = ClientMeta(modern=True, capabilities={"elicitation": {"form": {}}}, log_level="info")
LEGACY_CLIENT = ClientMeta(modern=False)
CONTEXT = ("--context-tools",)

Connect = Callable[..., Upstream]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect(process or config, **kwargs) -> an Upstream, closed at teardown."""
    clients: list[Upstream] = []

    def make(target: Any, **kwargs: Any) -> Upstream:
        config = target.config() if isinstance(target, UpstreamProcess) else target
        options = {"connect_timeout": 2.0, "read_timeout": 10.0, **kwargs}
        client = create_upstream(config, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def stdio_config(*args: str) -> ServerConfig:
    return ServerConfig(uuid.uuid4(), "kid", "stdio", None, sys.executable,
                        [str(SERVER), "--name", "kid", "--transport", "stdio", *CONTEXT, *args], {}, None, {}, None, True)


def seen(upstream: Upstream, client: ClientMeta | None = None) -> dict[str, Any]:
    """What the upstream's `context` tool saw of the request."""
    result = upstream.request("tools/call", {"name": "context", "arguments": {}}, client=client)
    return dict(json.loads(result["content"][0]["text"]))


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# --- the probe --------------------------------------------------------------------------------


def test_probe_finds_a_dual_era_server_modern(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("dual", extra_args=CONTEXT))
    assert isinstance(upstream, StreamableHttpUpstream)
    assert upstream.era is None  # nothing is sent before the first request
    upstream.list_all("tools/list", "tools")
    assert upstream.era is not None and upstream.era.modern and upstream.era.legacy
    assert upstream.server_info is not None and "tools" in upstream.server_info["capabilities"]


def test_probe_finds_a_legacy_only_server_legacy(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("old", extra_args=(*CONTEXT, "--legacy-only")))
    context = seen(upstream)  # the gateway's own request: a session all the same
    assert isinstance(upstream, StreamableHttpUpstream)
    assert upstream.era is not None and not upstream.era.modern
    assert context["protocolVersion"] == "2025-11-25" and "mcp-session-id" in context["headers"]
    assert upstream.server_info is not None and upstream.server_info["protocolVersion"] == "2025-11-25"


def test_a_modern_only_server_gets_every_request_stateless(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("new", extra_args=(*CONTEXT, "--modern-only")))
    context = seen(upstream, LEGACY_CLIENT)  # initialize refused (-32022): stateless after all
    assert context["protocolVersion"] == "2026-07-28" and "mcp-session-id" not in context["headers"]
    assert isinstance(upstream, StreamableHttpUpstream)
    assert upstream.era is not None and upstream.era.modern and not upstream.era.legacy
    call = upstream.call("tools/call", {"name": "echo", "arguments": {"message": "x"}}, client=LEGACY_CLIENT)
    try:
        assert call.modern is True
        assert list(call)[-1]["result"]["content"][0]["text"] == "new: x"
    finally:
        call.close()
    upstream.notify("notifications/roots/list_changed")  # 2026-07-28 has none: dropped, no error


# --- stateless requests -----------------------------------------------------------------------


def test_a_modern_call_carries_the_headers_and_meta(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("dual", extra_args=CONTEXT))
    call = upstream.call("tools/call", {"name": "context", "arguments": {}}, client=MODERN_CLIENT)
    try:
        reply = list(call)[-1]
        assert call.modern is True
    finally:
        call.close()
    context = json.loads(reply["result"]["content"][0]["text"])
    headers = context["headers"]
    assert context["protocolVersion"] == "2026-07-28"
    assert headers["mcp-protocol-version"] == "2026-07-28"
    assert headers["mcp-method"] == "tools/call" and headers["mcp-name"] == "context"
    assert "mcp-session-id" not in headers
    meta = context["meta"]
    assert meta[META_VERSION] == "2026-07-28"
    assert meta[META_CAPABILITIES] == MODERN_CLIENT.capabilities  # only what the client can answer
    assert meta[META_CLIENT_INFO]["name"] == "metamcp"
    assert meta[META_LOG_LEVEL] == "info"
    assert context["capabilities"] == {"elicitation": {"form": {}}}


def test_a_legacy_client_goes_on_a_session_to_a_dual_era_server(start_upstream: Any,
                                                                connect: Connect) -> None:
    upstream = connect(start_upstream("dual", extra_args=CONTEXT))
    call = upstream.call("tools/call", {"name": "context", "arguments": {}}, client=LEGACY_CLIENT)
    try:
        reply = list(call)[-1]
        assert call.modern is False
    finally:
        call.close()
    context = json.loads(reply["result"]["content"][0]["text"])
    assert context["protocolVersion"] == "2025-11-25" and "mcp-session-id" in context["headers"]
    assert "mcp-method" not in context["headers"]
    # ... and the gateway's own requests (client None) stay stateless beside that session.
    assert seen(upstream)["protocolVersion"] == "2026-07-28"


def test_list_fetches_are_stateless_on_a_modern_capable_server(start_upstream: Any, connect: Connect,
                                                               tmp_path: Any) -> None:
    log = Log(tmp_path / "up.log")
    upstream = connect(start_upstream("dual", page_size=2, tools=3, log_file=log.path))
    tools = upstream.list_all("tools/list", "tools")
    assert len(tools) > 4 and log.lines().count("received tools/list") == (len(tools) + 1) // 2
    assert upstream.list_all("prompts/list", "prompts")[0]["name"] == "greet"
    assert not any(line.startswith("received initialize") for line in log.lines())
    assert log.lines()[0] == "received server/discover"


def test_x_mcp_header_arguments_are_mirrored(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("dual", extra_args=CONTEXT))
    call = {"name": "regional", "arguments": {"region": "us-west1"}}
    # No tools/list seen yet: refused (-32020), the client lists the tools and sends it again.
    first = json.loads(upstream.request("tools/call", call)["content"][0]["text"])
    assert first == {"region": "us-west1", "header": "us-west1"}
    for region in ("us-west1", "Zürich", " padded "):
        call = {"name": "regional", "arguments": {"region": region}}
        answer = json.loads(upstream.request("tools/call", call)["content"][0]["text"])
        assert answer == {"region": region, "header": encode(region)}
    assert encode("Zürich") == "=?base64?WsO8cmljaA==?="


def test_input_required_is_the_response_as_it_is(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("dual", extra_args=CONTEXT))
    params: dict[str, Any] = {"name": "ask_user", "arguments": {"question": "Who are you?"}}
    first = upstream.request("tools/call", params, client=MODERN_CLIENT)
    assert first["resultType"] == "input_required"
    assert first["inputRequests"]["name"]["method"] == "elicitation/create"
    retry = {**params, "inputResponses": {"name": {"action": "accept", "content": {"name": "Ada"}}}}
    if "requestState" in first:
        retry["requestState"] = first["requestState"]
    done = upstream.request("tools/call", retry, client=MODERN_CLIENT)
    assert done["content"][0]["text"] == "accept: Ada"


def test_a_server_restarted_on_the_same_port_is_probed_again(start_upstream: Any,
                                                             connect: Connect) -> None:
    process = start_upstream("moving", extra_args=CONTEXT)
    upstream = connect(process)
    assert seen(upstream)["protocolVersion"] == "2026-07-28"
    process.command.append("--legacy-only")
    process.stop()
    with pytest.raises(UpstreamError):
        seen(upstream)  # connection refused: the probe's outcome is forgotten
    assert isinstance(upstream, StreamableHttpUpstream) and upstream.era is None
    process.restart()
    assert seen(upstream)["protocolVersion"] == "2025-11-25"
    assert upstream.era is not None and not upstream.era.modern


# --- notifications through subscriptions/listen ------------------------------------------------


def test_listen_delivers_list_changed_and_resource_updates(start_upstream: Any, connect: Connect) -> None:
    heard: list[dict[str, Any]] = []
    process = start_upstream("subs", extra_args=("--subscriptions",))
    upstream = connect(process, on_notification=lambda _server, message: heard.append(message))
    uri = "test://subs/counter"
    upstream.subscribe(uri)
    upstream.request("tools/call", {"name": "notify_changed", "arguments": {}})
    upstream.request("tools/call", {"name": "bump", "arguments": {}})
    assert wait_until(lambda: {m["method"] for m in heard} >= {
        "notifications/tools/list_changed", "notifications/resources/updated"})
    updated = next(m for m in heard if m["method"] == "notifications/resources/updated")
    assert updated["params"]["uri"] == uri and META_SUBSCRIPTION in updated["params"]["_meta"]
    upstream.unsubscribe(uri)
    time.sleep(0.3)  # the stream reopens without the URI
    heard.clear()
    upstream.request("tools/call", {"name": "bump", "arguments": {}})
    upstream.request("tools/call", {"name": "notify_changed", "arguments": {}})
    assert wait_until(lambda: any(m["method"] == "notifications/tools/list_changed" for m in heard))
    assert not any(m["method"] == "notifications/resources/updated" for m in heard)


def test_subscribe_on_a_legacy_only_server_sends_resources_subscribe(start_upstream: Any, connect: Connect,
                                                                     tmp_path: Any) -> None:
    heard: list[dict[str, Any]] = []
    log = Log(tmp_path / "up.log")
    process = start_upstream("subs", log_file=log.path, extra_args=("--subscriptions", "--legacy-only"))
    upstream = connect(process, on_notification=lambda _server, message: heard.append(message))
    upstream.subscribe("test://subs/counter")
    assert log.wait_for("resources/subscribe test://subs/counter")
    upstream.request("tools/call", {"name": "bump", "arguments": {}})
    assert wait_until(lambda: any(m["method"] == "notifications/resources/updated" for m in heard))
    upstream.unsubscribe("test://subs/counter")
    assert log.wait_for("resources/unsubscribe test://subs/counter")


# --- stdio ------------------------------------------------------------------------------------


def test_a_stdio_child_that_answers_discover_speaks_2026(connect: Connect) -> None:
    heard: list[dict[str, Any]] = []
    upstream = connect(stdio_config("--subscriptions"), start_timeout=10.0,
                       on_notification=lambda _server, message: heard.append(message))
    assert isinstance(upstream, StdioUpstream)
    context = seen(upstream, LEGACY_CLIENT)  # one era per child, whoever asks
    assert upstream.modern is True and context["protocolVersion"] == "2026-07-28"
    assert context["meta"][META_CLIENT_INFO]["name"] == "metamcp"
    first = upstream.request("tools/call", {"name": "ask_roots", "arguments": {}}, client=MODERN_CLIENT)
    assert first["resultType"] == "input_required" and first["inputRequests"]["roots"]["method"] == "roots/list"
    upstream.subscribe("test://kid/counter")
    upstream.request("tools/call", {"name": "bump", "arguments": {}})
    assert wait_until(lambda: any(m["method"] == "notifications/resources/updated" for m in heard))


def test_a_stdio_child_that_refuses_discover_is_initialized(connect: Connect) -> None:
    upstream = connect(stdio_config("--legacy-only"), start_timeout=10.0)
    assert isinstance(upstream, StdioUpstream)
    context = seen(upstream, MODERN_CLIENT)
    assert upstream.modern is False and context["protocolVersion"] == "2025-11-25"
    call = upstream.call("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    try:
        assert call.modern is False and list(call)[-1]["result"]["content"][0]["text"] == "kid: x"
    finally:
        call.close()


# --- the header codec (pure) --------------------------------------------------------------------


def test_header_values_are_encoded_as_the_specification_says() -> None:
    assert encode("us-west1") == "us-west1"
    assert encode("a b") == "a b"
    assert encode("Hello, 世界") == "=?base64?SGVsbG8sIOS4lueVjA==?="
    assert encode(" padded ") == "=?base64?IHBhZGRlZCA=?="
    assert encode("line1\nline2") == "=?base64?bGluZTEKbGluZTI=?="
    assert encode("=?base64?literal?=") == "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="


def test_header_maps_of_tool_schemas() -> None:
    schema = {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "nested": {"type": "object", "properties": {"flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
        "query": {"type": "string"}}}
    assert header_map(schema) == {("region",): "Region", ("nested", "flag"): "Flag"}
    assert header_map({"type": "object"}) == {}
    for invalid in (
            {"properties": {"n": {"type": "number", "x-mcp-header": "N"}}},
            {"properties": {"a": {"type": "string", "x-mcp-header": "X"},
                            "b": {"type": "string", "x-mcp-header": "x"}}},
            {"properties": {"a": {"type": "string", "x-mcp-header": "bad name"}}},
            {"properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "I"}}}},
            {"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]}):
        assert header_map(invalid) is None
    headers = request_headers("tools/call", {"name": "q", "arguments": {"region": "eu", "nested": {"flag": True}}},
                              header_map(schema))
    assert headers == {"Mcp-Method": "tools/call", "Mcp-Name": "q", "Mcp-Param-Region": "eu",
                       "Mcp-Param-Flag": "true"}
    assert request_headers("resources/read", {"uri": "file:///ä"})["Mcp-Name"] == encode("file:///ä")


def test_closing_a_modern_call_cancels_it_by_closing_its_stream(start_upstream: Any, connect: Connect,
                                                                tmp_path: Any) -> None:
    log = Log(tmp_path / "up.log")
    upstream = connect(start_upstream("dual", log_file=log.path))
    call = upstream.call("tools/call", {"name": "slow", "arguments": {"seconds": 10}}, client=MODERN_CLIENT)
    reader = threading.Thread(target=lambda: list(call))
    reader.start()
    assert log.wait_for("slow start")
    started = time.monotonic()
    call.close()
    reader.join(timeout=5)
    assert not reader.is_alive() and time.monotonic() - started < 3
    assert log.wait_for("slow cancelled")
    assert "received notifications/cancelled" not in log.lines()  # 2026-07-28: no notification
