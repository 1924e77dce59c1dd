"""Upstream MCP servers as subprocesses on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "servers" / "upstream_server.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UpstreamProcess:
    def __init__(self, name: str = "test", *, transport: str = "streamable-http",
                 json_response: bool = False, page_size: int = 0, tools: int = 0,
                 log_file: Path | None = None) -> None:
        self.name = name
        self.transport = transport
        self.port = _free_port()
        self.args = ["--port", str(self.port), "--name", name, "--transport", transport,
                     "--page-size", str(page_size), "--tools", str(tools)]
        if json_response:
            self.args.append("--json-response")
        if log_file is not None:
            self.args += ["--log-file", str(log_file)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> UpstreamProcess:
        self.proc = subprocess.Popen([sys.executable, str(SERVER), *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream {self.name} exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"upstream {self.name} did not listen within {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()
