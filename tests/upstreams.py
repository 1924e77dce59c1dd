"""Upstream MCP servers as subprocesses on 127.0.0.1 (started, stopped and restarted by PID).

`UpstreamProcess` runs tests/servers/upstream_server.py (or scripts/example_server.py with
`script=EXAMPLE_SERVER`); the `start_upstream` fixture starts any number of them and stops
them all at teardown. Import the fixture into a test module (or conftest) to use it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metamcp.servers import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "servers" / "upstream_server.py"
EXAMPLE_SERVER = ROOT / "scripts" / "example_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate by PID, wait, kill if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class UpstreamProcess:
    """One upstream server process. Options map to the script's flags."""

    def __init__(self, name: str = "test", *, transport: str = "streamable-http",
                 json_response: bool = False, page_size: int = 0, tools: int = 0,
                 log_file: Path | None = None, resumable: bool = False,
                 script: Path = SERVER, extra_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.transport = transport
        self.port = free_port()
        if script == SERVER:
            args = ["--name", name, "--page-size", str(page_size), "--tools", str(tools)]
            if log_file is not None:
                args += ["--log-file", str(log_file)]
            if resumable:
                args.append("--resumable")
        else:  # the example server: --profile, --extra-tools, --stateless... via extra_args
            args = ["--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--transport", transport, *extra_args]
        if json_response:
            args.append("--json-response")
        self.command = [sys.executable, str(script), *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> UpstreamProcess:
        """Start it and wait (bounded) until the port accepts connections."""
        self.spawn()
        return self.wait_listening(timeout)

    def spawn(self) -> None:
        """Start it without waiting (see start_all)."""
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)

    def wait_listening(self, timeout: float = 20.0) -> UpstreamProcess:
        """Wait (bounded) until the spawned process's port accepts connections."""
        assert self.proc is not None, "not spawned"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream {self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"upstream {self.name} did not listen within {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def restart(self, timeout: float = 20.0) -> UpstreamProcess:
        """Stop and start again on the same port (a fresh server: every session forgotten)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:  # the old socket may linger for a moment
            try:
                return self.start(timeout=max(deadline - time.monotonic(), 1.0))
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise

    def output(self) -> str:
        """What the server wrote on stderr so far (for failure messages)."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def config(self, server_name: str | None = None, **fields: Any) -> ServerConfig:
        """A ServerConfig pointing at this process (fields: headers, bearer_token, ...)."""
        transport = "sse" if self.transport == "sse" else "streamable_http"
        return server_config(server_name or self.name, self.url, transport, **fields)


def start_all(upstreams: Iterable[UpstreamProcess], timeout: float = 20.0) -> None:
    """Start several side by side (each spends about a second importing), then wait for each."""
    spawned = list(upstreams)
    for upstream in spawned:
        upstream.spawn()
    for upstream in spawned:
        upstream.wait_listening(timeout)


class Log:
    """The lines an upstream wrote to its --log-file since the last mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = len(self.path.read_text()) if self.path.exists() else 0

    def lines(self) -> list[str]:
        return self.path.read_text()[self.offset:].splitlines() if self.path.exists() else []

    def wait_for(self, line: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(seen.startswith(line) for seen in self.lines()):
                return True
            time.sleep(0.02)
        return False


def server_config(name: str, url: str, transport: str = "streamable_http", *,
                  headers: dict[str, str] | None = None, bearer_token: str | None = None) -> ServerConfig:
    return ServerConfig(id=uuid.uuid4(), name=name, transport=transport, url=url, command=None,
                        args=[], env={}, cwd=None, headers=headers or {}, bearer_token=bearer_token,
                        is_active=True)


@pytest.fixture
def start_upstream() -> Iterator[Callable[..., UpstreamProcess]]:
    """start_upstream(name=..., **options) -> a started UpstreamProcess, stopped at teardown."""
    started: list[UpstreamProcess] = []

    def start(name: str = "test", **options: Any) -> UpstreamProcess:
        process = UpstreamProcess(name, **options)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
