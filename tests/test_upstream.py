"""The upstream clients against real SDK servers: Streamable HTTP (SSE and JSON replies), HTTP+SSE."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from metamcp.mcp.jsonrpc import RpcError
from metamcp.mcp.upstream.call import GatewayStopping, UpstreamError, UpstreamTimeout
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.interface import Upstream

from .upstreams import EXAMPLE_SERVER, Log, UpstreamProcess, free_port, server_config
from .upstreams import start_upstream as start_upstream  # noqa: F401 - the fixture

TRANSPORTS = ["sse-replies", "json-replies", "legacy"]
#: The 2025 session client: Streamable HTTP servers that speak only 2025 (2026-07-28 upstreams:
#: test_upstream_modern.py).
LEGACY_ONLY = ("--legacy-only",)
OPTIONS: dict[str, dict[str, Any]] = {
    "sse-replies": {"extra_args": LEGACY_ONLY}, "json-replies": {"json_response": True, "extra_args": LEGACY_ONLY},
    "legacy": {"transport": "sse"}}
PROTOCOL_HEADERS = {"host", "accept-encoding", "user-agent", "accept", "content-type", "content-length",
                    "mcp-session-id", "mcp-protocol-version"}

Connect = Callable[..., Upstream]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[UpstreamProcess, Log]]]:
    """One shared upstream per transport, paginating by 2, each with its log."""
    directory = tmp_path_factory.mktemp("upstreams")
    started: dict[str, tuple[UpstreamProcess, Log]] = {}
    try:
        for kind in TRANSPORTS:
            log = Log(directory / f"{kind}.log")
            process = UpstreamProcess("alpha", page_size=2, tools=5, log_file=log.path, **OPTIONS[kind])
            started[kind] = (process.start(), log)
        yield started
    finally:
        for process, _ in started.values():
            process.stop()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """connect(process or config, **kwargs) -> an Upstream, closed at teardown."""
    clients: list[Upstream] = []

    def make(target: Any, *, connect_timeout: float = 2.0, read_timeout: float = 10.0, **kwargs: Any) -> Upstream:
        config = target.config() if isinstance(target, UpstreamProcess) else target
        client = create_upstream(config, connect_timeout=connect_timeout, read_timeout=read_timeout, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def call_tool(upstream: Upstream, name: str, **arguments: Any) -> dict[str, Any]:
    return upstream.request("tools/call", {"name": name, "arguments": arguments})


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_initialize_and_lists_across_pages(kind: str, servers: Any, connect: Connect) -> None:
    process, log = servers[kind]
    upstream = connect(process)
    log.mark()
    tools = upstream.list_all("tools/list", "tools")
    assert upstream.server_info is not None
    assert upstream.server_info["serverInfo"]["name"] == "upstream-alpha"
    assert upstream.server_info["protocolVersion"] == "2025-11-25"
    names = [tool["name"] for tool in tools]
    assert names[:3] == ["echo", "add", "slow"] and names[-1] == "tool_004" and len(names) == 19
    assert log.lines().count("received tools/list") == 10  # 19 tools, 2 a page
    assert [p["name"] for p in upstream.list_all("prompts/list", "prompts")] == ["greet"]
    assert [r["uri"] for r in upstream.list_all("resources/list", "resources")] == ["test://alpha/info"]
    templates = upstream.list_all("resources/templates/list", "resourceTemplates")
    assert [t["uriTemplate"] for t in templates] == ["test://alpha/items/{item}"]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_methods_and_results(kind: str, servers: Any, connect: Connect) -> None:
    upstream = connect(servers[kind][0])
    assert text(call_tool(upstream, "echo", message="hi")) == "alpha: hi"
    assert call_tool(upstream, "add", a=2, b=3)["structuredContent"] == {"result": 5}
    failed = call_tool(upstream, "fail")
    assert failed["isError"] is True and "always fails" in text(failed)
    prompt = upstream.request("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})
    assert "Ada" in prompt["messages"][0]["content"]["text"]
    read = upstream.request("resources/read", {"uri": "test://alpha/items/7"})
    assert read["contents"][0]["text"] == "alpha item 7"
    completion = upstream.request("completion/complete", {
        "ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": "A"}})
    assert completion["completion"]["values"] == ["Ada", "Alan"]
    assert upstream.request("logging/setLevel", {"level": "debug"}) == {}
    assert upstream.request("ping") == {}


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_json_rpc_errors_raise_upstream_rpc_error(kind: str, servers: Any, connect: Connect) -> None:
    upstream = connect(servers[kind][0])
    with pytest.raises(RpcError) as unknown_uri:
        upstream.request("resources/read", {"uri": "test://nowhere"})
    assert unknown_uri.value.code == -32602
    with pytest.raises(RpcError) as unknown_method:
        upstream.request("no/such/method")
    assert unknown_method.value.code == -32601


@pytest.mark.parametrize("kind", ["sse-replies", "legacy"])
def test_progress_notifications_arrive_in_order_before_the_result(kind: str, servers: Any,
                                                                   connect: Connect) -> None:
    upstream = connect(servers[kind][0])
    params = {"name": "progress", "arguments": {"steps": 4}, "_meta": {"progressToken": 42}}
    messages = list(upstream.call("tools/call", params))
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert [p["progress"] for p in progress] == [1, 2, 3, 4]
    assert {p["progressToken"] for p in progress} == {42}  # the legacy rewrite is mapped back
    assert messages[-1]["result"]["content"][0]["text"] == "done"
    if kind == "sse-replies":  # log messages travel on the call's own stream
        logs = [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"]
        assert logs == ["step 1", "step 2", "step 3", "step 4"]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_concurrent_calls_are_multiplexed(kind: str, servers: Any, connect: Connect) -> None:
    upstream = connect(servers[kind][0])

    def one(index: int) -> tuple[str, list[Any]]:
        if index % 4:
            return text(call_tool(upstream, "echo", message=f"m{index}")), []
        # The same client-side token on every call: each call must get only its own progress.
        call = upstream.call("tools/call", {"name": "progress", "arguments": {"steps": 3},
                                            "_meta": {"progressToken": "same"}})
        messages = list(call)
        steps = [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"]
        return messages[-1]["result"]["content"][0]["text"], steps

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    for index, (answer, steps) in enumerate(results):
        if index % 4:
            assert answer == f"alpha: m{index}"
        else:
            assert answer == "done" and steps == ([] if kind == "json-replies" else [1, 2, 3])


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_only_the_configured_credentials_reach_the_upstream(kind: str, servers: Any, connect: Connect) -> None:
    process = servers[kind][0]
    upstream = connect(process.config(headers={"X-Upstream-Key": "configured"}, bearer_token="t0ken"))
    seen = {k.lower(): v for k, v in json.loads(text(call_tool(upstream, "headers"))).items()}
    assert seen["x-upstream-key"] == "configured"
    assert seen["authorization"] == "Bearer t0ken"
    assert set(seen) - PROTOCOL_HEADERS == {"x-upstream-key", "authorization"}
    bare = connect(process.config())
    names = {k.lower() for k in json.loads(text(call_tool(bare, "headers")))}
    assert names <= PROTOCOL_HEADERS and "authorization" not in names


@pytest.mark.parametrize("kind", ["sse-replies", "legacy"])
def test_an_upstream_restart_is_survived(kind: str, tmp_path: Path, start_upstream: Any,
                                         connect: Connect) -> None:
    log = Log(tmp_path / "restart.log")
    process = start_upstream("alpha", log_file=log.path, **OPTIONS[kind])
    upstream = connect(process)
    assert text(call_tool(upstream, "echo", message="one")) == "alpha: one"
    process.restart()
    log.mark()
    assert text(call_tool(upstream, "echo", message="two")) == "alpha: two"
    assert log.lines().count("received initialize") == 1  # re-initialized once, then retried
    assert log.lines().count("received tools/call") == 1


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_an_upstream_that_is_down_fails_fast(transport: str, connect: Connect) -> None:
    path = "/sse" if transport == "sse" else "/mcp"
    upstream = connect(server_config("down", f"http://127.0.0.1:{free_port()}{path}", transport))
    start = time.monotonic()
    with pytest.raises(UpstreamError) as failure:
        upstream.list_all("tools/list", "tools")
    assert time.monotonic() - start < 1.0
    assert not isinstance(failure.value, UpstreamTimeout)
    assert "'down'" in failure.value.message and "refused" in failure.value.message
    assert (failure.value.status, failure.value.code) == (502, "bad_gateway")


@pytest.mark.parametrize("kind", ["sse-replies", "legacy"])
def test_a_slow_call_past_its_timeout_raises_upstream_timeout(kind: str, servers: Any,
                                                               connect: Connect) -> None:
    upstream = connect(servers[kind][0])
    start = time.monotonic()
    with pytest.raises(UpstreamTimeout) as timeout:
        upstream.request("tools/call", {"name": "slow", "arguments": {"seconds": 3}}, timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 1.5
    assert (timeout.value.status, timeout.value.code) == (504, "gateway_timeout")
    assert text(call_tool(upstream, "echo", message="after")) == "alpha: after"  # still usable


def test_progress_resets_the_read_timeout(servers: Any, connect: Connect) -> None:
    """Each progress notification restarts the read timeout: the call outlasts it in all."""
    upstream = connect(servers["sse-replies"][0], read_timeout=0.15)
    params = {"name": "progress", "arguments": {"steps": 12}, "_meta": {"progressToken": 1}}
    start = time.monotonic()
    messages = list(upstream.call("tools/call", params))
    assert time.monotonic() - start > 0.2  # longer than the read timeout in all
    assert messages[-1]["result"]["content"][0]["text"] == "done"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_cancel_from_another_thread_stops_the_call(kind: str, servers: Any, connect: Connect) -> None:
    process, log = servers[kind]
    upstream = connect(process)
    upstream.request("ping")
    log.mark()
    call = upstream.call("tools/call", {"name": "slow", "arguments": {"seconds": 10}})
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.extend(call))
    reader.start()
    assert log.wait_for("slow start")
    start = time.monotonic()
    call.cancel("user pressed stop")
    reader.join(timeout=2)
    assert time.monotonic() - start < 1.0
    assert not reader.is_alive() and not [m for m in received if "method" not in m]
    assert log.wait_for(f"received notifications/cancelled {call.request_id}")
    assert log.wait_for("slow cancelled")
    call.cancel()  # idempotent
    call.close()
    assert log.lines().count(f"received notifications/cancelled {call.request_id}") == 1
    assert text(call_tool(upstream, "echo", message="next")) == "alpha: next"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_abort_calls_ends_every_call_in_flight_and_later_ones(kind: str, servers: Any, connect: Connect) -> None:
    """What a stopping worker does (Pool.stop): readers blocked on a silent upstream raise the
    failure at once, the upstream hears the cancellations, calls made afterwards fail at once."""
    process, log = servers[kind]
    upstream = connect(process)
    upstream.request("ping")
    log.mark()
    calls = [upstream.call("tools/call", {"name": "slow", "arguments": {"seconds": 10}}) for _ in range(2)]
    failures: list[BaseException] = []

    def read(call: Any) -> None:
        try:
            list(call)
        except UpstreamError as e:
            failures.append(e)

    readers = [threading.Thread(target=read, args=(call,)) for call in calls]
    for reader in readers:
        reader.start()
    assert _wait(lambda: sum(line.startswith("slow start") for line in log.lines()) == 2)
    assert upstream.calls_in_flight == 2
    start = time.monotonic()
    upstream.abort_calls(GatewayStopping("the gateway is stopping"))
    for reader in readers:
        reader.join(timeout=2)
    assert time.monotonic() - start < 1.0 and not any(reader.is_alive() for reader in readers)
    assert [type(e) for e in failures] == [GatewayStopping, GatewayStopping]
    for call in calls:
        assert log.wait_for(f"received notifications/cancelled {call.request_id}")
        call.close()
    assert upstream.calls_in_flight == 0
    with pytest.raises(GatewayStopping):
        call_tool(upstream, "echo", message="too late")


def _wait(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("kind", ["sse-replies", "legacy"])
def test_closing_a_call_midway_cancels_it(kind: str, servers: Any, connect: Connect) -> None:
    process, log = servers[kind]
    upstream = connect(process)
    upstream.request("ping")
    log.mark()
    if kind == "sse-replies":  # sent when iteration starts: read the first message, then stop
        call = upstream.call("tools/call", {"name": "progress", "arguments": {"steps": 100},
                                            "_meta": {"progressToken": 1}})
        assert next(iter(call))["method"] in ("notifications/message", "notifications/progress")
    else:  # posted at once: close it unread
        call = upstream.call("tools/call", {"name": "slow", "arguments": {"seconds": 10}})
        assert log.wait_for("slow start")
    start = time.monotonic()
    call.close()
    assert time.monotonic() - start < 1.0
    assert log.wait_for(f"received notifications/cancelled {call.request_id}")
    assert text(call_tool(upstream, "echo", message="next")) == "alpha: next"


def test_a_streamable_call_goes_out_when_iterated(servers: Any, connect: Connect) -> None:
    process, log = servers["json-replies"]
    upstream = connect(process)
    upstream.request("ping")
    log.mark()
    call = upstream.call("tools/call", {"name": "slow", "arguments": {"seconds": 10}})
    start = time.monotonic()
    call.close()  # never iterated: never sent, nothing to cancel
    assert time.monotonic() - start < 0.5
    upstream.request("ping")
    assert log.lines() == ["received ping"]


def test_closing_an_answered_call_sends_no_cancel(servers: Any, connect: Connect) -> None:
    process, log = servers["sse-replies"]
    upstream = connect(process)
    call = upstream.call("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    log.mark()
    assert [m for m in call if "result" in m]
    call.close()
    call.cancel()
    upstream.request("ping")
    assert not [line for line in log.lines() if "cancelled" in line]


def test_a_forgotten_call_is_freed_at_once(servers: Any, connect: Connect) -> None:
    """Regression: a PendingCall and its generator formed a cycle. Left to the cyclic garbage
    collector, the generator drained its stream from a finalizer and pooled a connection
    whose socket the same collection closed: the next request failed with a ValueError."""
    upstream = connect(servers["sse-replies"][0])
    gc.disable()
    try:
        call = upstream.call("tools/call", {"name": "echo", "arguments": {"message": "x"}})
        iterator = iter(call)
        while "result" not in next(iterator):  # stop at the response, as the gateway does
            pass
        forgotten = weakref.ref(call)
        del call, iterator
        assert forgotten() is None  # freed by reference counting, no collector involved
    finally:
        gc.enable()
    assert [upstream.request("ping") for _ in range(3)] == [{}, {}, {}]


def test_a_dead_legacy_stream_fails_the_waiting_calls(start_upstream: Any, connect: Connect) -> None:
    process = start_upstream("alpha", transport="sse")
    upstream = connect(process)
    call = upstream.call("tools/call", {"name": "slow", "arguments": {"seconds": 10}})
    failures: list[Exception] = []

    def read() -> None:
        try:
            list(call)
        except UpstreamError as e:
            failures.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    process.stop()
    reader.join(timeout=3)
    assert not reader.is_alive() and failures and "event stream closed" in str(failures[0])
    process.start()
    assert text(call_tool(upstream, "echo", message="back")) == "alpha: back"  # reconnected


def test_a_stream_closed_midway_is_resumed(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("alpha", resumable=True, extra_args=LEGACY_ONLY))
    params = {"name": "resumable", "arguments": {"steps": 4}, "_meta": {"progressToken": "r"}}
    messages = list(upstream.call("tools/call", params))
    assert [m["params"]["progress"] for m in messages if "method" in m] == [1, 2, 3, 4]
    assert messages[-1]["result"]["content"][0]["text"] == "resumed"


@pytest.mark.parametrize("kind", ["sse-replies", "legacy"])
def test_server_notifications_reach_on_notification(kind: str, servers: Any, connect: Connect) -> None:
    received: list[tuple[str, dict[str, Any]]] = []
    arrived = threading.Event()

    def on_notification(server: str, message: dict[str, Any]) -> None:
        if message["method"] == "notifications/tools/list_changed":
            received.append((server, message))
            arrived.set()

    upstream = connect(servers[kind][0], on_notification=on_notification)
    upstream.request("ping")
    time.sleep(0.3)  # the standing GET stream (streamable HTTP) opens after initialize
    assert text(call_tool(upstream, "notify_changed")) == "sent"
    assert arrived.wait(5)
    assert received[0][0] == "alpha"


def test_a_ping_from_the_upstream_is_answered(servers: Any, connect: Connect) -> None:
    upstream = connect(servers["sse-replies"][0])
    assert text(call_tool(upstream, "ask_ping")) == "pong"


def test_close_ends_the_upstream_session(servers: Any, connect: Connect) -> None:
    process = servers["sse-replies"][0]
    upstream = connect(process)
    session_id = json.loads(text(call_tool(upstream, "headers")))["mcp-session-id"]
    upstream.close()
    reply = requests.post(process.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=5, headers={
        "Accept": "application/json, text/event-stream", "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": "2025-11-25"})
    assert reply.status_code == 404
    with pytest.raises(UpstreamError):
        upstream.request("ping")


def test_the_example_server_works_too(start_upstream: Any, connect: Connect) -> None:
    upstream = connect(start_upstream("files", script=EXAMPLE_SERVER, extra_args=("--profile", "files")))
    assert "read_file" in [t["name"] for t in upstream.list_all("tools/list", "tools")]
    assert "example MCP server" in text(call_tool(upstream, "read_file", path="welcome.txt"))


def test_stdio_without_a_command_is_refused() -> None:
    config = server_config("local", "", "stdio")
    with pytest.raises(UpstreamError, match="no command"):
        create_upstream(config, connect_timeout=1, read_timeout=1)
