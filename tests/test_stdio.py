"""Stdio upstreams: real SDK children, supervised; nothing leaked (real processes, no mocks)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metamcp.mcp.upstream.call import UpstreamError, UpstreamTimeout
from metamcp.mcp.upstream.stdio import StdioUpstream
from metamcp.servers import ServerConfig

from .upstreams import SERVER

MARKER = f"metamcp-stdio-test-{os.getpid()}"


def config(*args: str, env: dict[str, str] | None = None, command: str = sys.executable) -> ServerConfig:
    return ServerConfig(uuid.uuid4(), "kid", "stdio", None, command,
                        [str(SERVER), "--transport", "stdio", "--name", MARKER, *args],
                        env or {}, None, {}, None, True)


@pytest.fixture
def make() -> Iterator[Callable[..., StdioUpstream]]:
    made: list[StdioUpstream] = []

    def build(cfg: ServerConfig, **options: Any) -> StdioUpstream:
        upstream = StdioUpstream(cfg, connect_timeout=2, read_timeout=options.pop("read_timeout", 10),
                                 start_timeout=options.pop("start_timeout", 20), **options)
        made.append(upstream)
        return upstream

    yield build
    for upstream in made:
        upstream.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie would still answer: look at its state too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def marked_processes() -> list[int]:
    """Processes on this machine whose command line carries this test run's marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if MARKER.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if alive(pid)]


def echo(upstream: StdioUpstream, text: str) -> str:
    return upstream.request("tools/call", {"name": "echo", "arguments": {"message": text}})["content"][0]["text"]


def test_list_and_call(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    names = {t["name"] for t in upstream.list_all("tools/list", "tools")}
    assert {"echo", "add", "slow", "progress"} <= names
    assert echo(upstream, "hi") == f"{MARKER}: hi"
    state = upstream.state()
    assert state["running"] and alive(state["pid"]) and state["restarts"] == 0


def test_progress_notifications_reach_the_call(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    call = upstream.call("tools/call", {"name": "progress", "arguments": {"steps": 3},
                                        "_meta": {"progressToken": "mine"}})
    messages = list(call)
    progress = [m for m in messages if m.get("method") == "notifications/progress"]
    assert [m["params"]["progress"] for m in progress] == [1, 2, 3]
    assert all(m["params"]["progressToken"] == "mine" for m in progress)
    assert messages[-1]["result"]["content"][0]["text"] == "done"


def test_kill_between_calls_restarts_on_next_request(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    assert echo(upstream, "one")
    first = upstream.state()["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while upstream.state()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert echo(upstream, "two") == f"{MARKER}: two"
    state = upstream.state()
    assert state["pid"] != first and state["restarts"] == 1 and "status -9" in state["last_error"]
    assert not alive(first)


def test_kill_during_a_call_fails_only_that_call(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    assert echo(upstream, "warm")
    pid = upstream.state()["pid"]
    outcome: dict[str, BaseException | None] = {}

    def slow() -> None:
        try:
            upstream.request("tools/call", {"name": "slow", "arguments": {"seconds": 10}})
            outcome["error"] = None
        except UpstreamError as e:
            outcome["error"] = e

    caller = threading.Thread(target=slow)
    caller.start()
    time.sleep(0.5)
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    caller.join(timeout=10)
    assert time.monotonic() - started < 3
    assert isinstance(outcome["error"], UpstreamError) and "closed" in str(outcome["error"])
    assert echo(upstream, "after") == f"{MARKER}: after"


def test_repeated_crashes_back_off(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    for _ in range(3):
        echo(upstream, "x")
        pid = upstream.state()["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while upstream.state()["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
    with pytest.raises(UpstreamError, match="next start in"):
        echo(upstream, "too soon")
    time.sleep(0.6)
    assert echo(upstream, "later") == f"{MARKER}: later"


def test_a_thousand_calls_on_one_child(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    echo(upstream, "warm")
    pid = upstream.state()["pid"]
    for index in range(1000):
        assert echo(upstream, str(index)) == f"{MARKER}: {index}"
    assert upstream.state()["pid"] == pid and marked_processes() == [pid]


def test_concurrent_calls_are_multiplexed(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    results: dict[int, str] = {}

    def work(index: int) -> None:
        results[index] = echo(upstream, f"n{index}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {i: f"{MARKER}: n{i}" for i in range(16)}
    assert len(marked_processes()) == 1


def test_stderr_flood_is_bounded_and_stdout_noise_skipped(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config("--stderr-flood", "5000", "--stdio-noise"))
    assert echo(upstream, "still fine") == f"{MARKER}: still fine"
    deadline = time.monotonic() + 5
    while len(upstream.stderr_lines()) < 500 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = upstream.stderr_lines()
    assert len(lines) == 500 and all(len(line) <= 2000 for line in lines)
    assert "stderr flood line 4999" in "\n".join(lines)


def test_child_that_never_answers_initialize(make: Callable[..., StdioUpstream]) -> None:
    silent = ServerConfig(uuid.uuid4(), "silent", "stdio", None, sys.executable,
                          ["-c", f"import time; time.sleep(60)  # {MARKER}"], {}, None, {}, None, True)
    upstream = make(silent, start_timeout=1)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="did not answer initialize within 1s"):
        upstream.list_all("tools/list", "tools")
    assert time.monotonic() - started < 8
    assert marked_processes() == []
    assert "initialize" in upstream.state()["last_error"]


def test_missing_command_is_a_clear_error(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config(command="/nonexistent/mcp-server"))
    with pytest.raises(UpstreamError, match="cannot start the command"):
        upstream.list_all("tools/list", "tools")


def test_environment_is_an_allow_list_plus_configured(make: Callable[..., StdioUpstream], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    dump = tmp_path / "env.json"
    monkeypatch.setenv("JWT_SECRET", "gateway-secret-must-not-leak")
    monkeypatch.setenv("METAMCP_TEST_VALUE", "from-gateway")
    script = (f"import json, os, runpy, sys; json.dump(dict(os.environ), open({str(dump)!r}, 'w')); "
              f"sys.argv = [{str(SERVER)!r}, '--transport', 'stdio', '--name', {MARKER!r}]; "
              f"runpy.run_path({str(SERVER)!r}, run_name='__main__')")
    cfg = ServerConfig(uuid.uuid4(), "env", "stdio", None, sys.executable, ["-c", script],
                       {"API_TOKEN": "configured", "DERIVED": "x-${METAMCP_TEST_VALUE}"}, None, {}, None, True)
    upstream = make(cfg)
    assert echo(upstream, "env") == f"{MARKER}: env"
    seen = json.loads(dump.read_text())
    assert seen["API_TOKEN"] == "configured" and seen["DERIVED"] == "x-from-gateway"
    assert "JWT_SECRET" not in seen and "METAMCP_TEST_VALUE" not in seen
    assert set(seen) <= {"API_TOKEN", "DERIVED", "PATH", "HOME", "LANG", "TMPDIR", "TZ", "USER",
                         "LOGNAME", "SHELL", "TERM", "SSL_CERT_FILE", "SSL_CERT_DIR"} | {
        k for k in seen if k.startswith("LC_") or "PROXY" in k.upper() or "CA_" in k} | {"PWD", "LC_CTYPE"}


def test_close_stops_and_reaps_the_child(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config())
    echo(upstream, "x")
    pid = upstream.state()["pid"]
    upstream.close()
    assert not alive(pid) and marked_processes() == []


def test_idle_child_is_stopped_and_started_again(make: Callable[..., StdioUpstream]) -> None:
    upstream = make(config(), idle_timeout=1)
    echo(upstream, "x")
    pid = upstream.state()["pid"]
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and not upstream.state()["running"]
    assert echo(upstream, "back") == f"{MARKER}: back"
    assert upstream.state()["restarts"] == 0  # stopping an idle child is no crash


def test_children_per_worker_are_capped(make: Callable[..., StdioUpstream]) -> None:
    places = threading.BoundedSemaphore(1)
    first = make(config(), children=places)
    second = make(config(), children=places)
    echo(first, "x")
    with pytest.raises(UpstreamError, match="METAMCP_STDIO_MAX_CHILDREN"):
        echo(second, "y")
    first.close()
    assert echo(second, "now") == f"{MARKER}: now"
