"""What the benchmarks share: free ports, waiting for a server, minimal MCP clients (a 2025 session,
a 2026-07-28 stateless client), timed calls over threads, percentiles, and stopping the processes
they started (by PID)."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
ACCEPT = "application/json, text/event-stream"
MODERN_VERSION = "2026-07-28"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except (requests.ConnectionError, requests.Timeout):  # not listening, or not answering yet
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


class McpSession:
    """A minimal Streamable HTTP client: one requests.Session, one MCP session."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.http = requests.Session()
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json", **(headers or {})}
        reply = self.http.post(url, headers=self.headers, timeout=30, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "1"}}})
        reply.raise_for_status()
        self.headers["Mcp-Session-Id"] = reply.headers["Mcp-Session-Id"]
        self.headers["MCP-Protocol-Version"] = "2025-06-18"
        self.http.post(url, headers=self.headers, timeout=30,
                       json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(self.url, headers=self.headers, timeout=30,
                                  json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        return read_response(response)


class StatelessClient:
    """A minimal 2026-07-28 client: no initialize, no session; every request carries the
    revision's headers (version, method, name) and its `_meta` (version, clientInfo and
    capabilities, as the official client sends them)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.http = requests.Session()
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json",
                        "MCP-Protocol-Version": MODERN_VERSION, **(headers or {})}

    def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        # What the official client stamps on every request: version, clientInfo, capabilities.
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}}
        headers = {**self.headers, "Mcp-Method": method}
        name = params.get("name", params.get("uri"))
        if isinstance(name, str):
            headers["Mcp-Name"] = name
        response = self.http.post(self.url, headers=headers, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}})
        return read_response(response)


def read_response(response: requests.Response) -> dict[str, Any]:
    """The JSON-RPC response of a POST: its JSON body, or the first response on its SSE stream."""
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                message = json.loads(line[5:])
                if "method" not in message:
                    return dict(message)
        raise RuntimeError("stream ended without a response")
    try:
        return dict(response.json())
    except ValueError:
        return {"error": {"code": None, "message": f"HTTP {response.status_code}: {response.text[:200]}"}}


def measure(sessions: Sequence[Any], total: int, call: Callable[[Any], Any]) -> tuple[list[float], float]:
    """Run `total` calls spread over one thread per session; (latencies in ms, calls/s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = max(1, total // len(sessions))

    def worker(session: Any) -> None:
        mine = []
        for _ in range(per_thread):
            start = time.perf_counter()
            call(session)
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(s,)) for s in sessions]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, len(latencies) / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def stop_all(processes: list[subprocess.Popen[Any]], grace: float) -> None:
    """Ctrl-C each process (the last started first), then kill what is left after `grace` s."""
    for process in reversed(processes):
        process.send_signal(2)
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
