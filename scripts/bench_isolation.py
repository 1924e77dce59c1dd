"""Slow-call isolation benchmark (`scripts/bench.py --isolation`): one key holds many long tool
calls and another many open GET notification streams, while a third key's short tools/call is
timed. Prints a table with the short call's latency, what the long holders got, and the
workers' memory (RSS), threads and CPU.

The long holders run in a child process on a small asyncio HTTP/1.1 client (no extra
dependency), so the timed calls do not share a GIL with them.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests
from bench_harness import ROOT, McpSession, free_port, pct, stop_all, wait_for

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "bench-isolation", "version": "1"}}}


# --- the long holders (child process) -----------------------------------------------------

async def _request(port: int, method: str, path: str, headers: dict[str, str],
                   body: bytes = b"") -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    found: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        found[name.strip().lower()] = value.strip()
    return status, found, reader, writer


async def _session(port: int, key: str) -> str:
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "Connection": "close"}
    status, found, _reader, writer = await _request(port, "POST", "/mcp", headers, json.dumps(INIT).encode())
    writer.close()
    if status != 200:
        raise RuntimeError(f"initialize answered {status}")
    return found["mcp-session-id"]


async def _hold_stream(port: int, key: str, session: str, opened: list[int], stop: asyncio.Event) -> None:
    headers = {"X-API-Key": key, "Accept": "text/event-stream", "Mcp-Session-Id": session,
               "MCP-Protocol-Version": "2025-06-18"}
    status, _found, reader, writer = await _request(port, "GET", "/mcp", headers)
    opened.append(status)
    try:
        while status == 200 and not stop.is_set():
            try:
                if not await asyncio.wait_for(reader.readline(), 1.0):
                    return
            except TimeoutError:
                continue
    finally:
        writer.close()


async def _slow_call(port: int, key: str, session: str, seconds: float,
                     results: list[tuple[int, float, bool]], errors: list[str]) -> None:
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "Mcp-Session-Id": session,
               "MCP-Protocol-Version": "2025-06-18", "Connection": "close"}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "slow__sleep", "arguments": {"seconds": seconds}}}).encode()
    start = time.monotonic()
    try:
        status, _found, reader, writer = await _request(port, "POST", "/mcp", headers, body)
        rest = await asyncio.wait_for(reader.read(), seconds + 60)
        writer.close()
        good = b'"result"' in rest and b"slept" in rest
        results.append((status, time.monotonic() - start, good))
        if not good:
            errors.append(rest.decode(errors="replace")[-300:])
    except (OSError, TimeoutError, ValueError, IndexError) as e:
        results.append((0, time.monotonic() - start, False))
        errors.append(repr(e))


async def _load(conn: Connection, port: int, stream_key: str, call_key: str, streams: int, calls: int,
                seconds: float) -> None:
    stop = asyncio.Event()
    opened: list[int] = []
    sessions = []
    for start in range(0, streams, 50):  # sessions in batches: the point is holding, not opening
        sessions += await asyncio.gather(*(_session(port, stream_key) for _ in range(start, min(streams, start + 50))))
    holders = [asyncio.create_task(_hold_stream(port, stream_key, s, opened, stop)) for s in sessions]
    while len(opened) < streams:
        await asyncio.sleep(0.1)
    conn.send({"streams": {str(s): opened.count(s) for s in set(opened)}})
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "go"
    call_sessions = [await _session(port, call_key) for _ in range(10)]
    results: list[tuple[int, float, bool]] = []
    errors: list[str] = []
    calls_done = asyncio.gather(*(_slow_call(port, call_key, call_sessions[i % 10], seconds, results, errors)
                                  for i in range(calls)))
    conn.send({"calls_sent": True})
    await calls_done
    conn.send({"calls": results, "errors": sorted(set(errors))[:5]})
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
    stop.set()
    await asyncio.gather(*holders, return_exceptions=True)


def _load_main(conn: Connection, *args: Any) -> None:
    asyncio.run(_load(conn, *args))


# --- measuring (this process) -------------------------------------------------------------

def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _snapshot(master: int) -> dict[str, float]:
    pids = _workers(master)
    return {"rss_mb": sum(_status(p, "VmRSS") for p in pids) / 1024,
            "threads": sum(_status(p, "Threads") for p in pids),
            "cpu": sum(_cpu_seconds(p) for p in pids), "workers": len(pids)}


def _timed_calls(session: McpSession, until: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    while time.monotonic() < until:
        start = time.perf_counter()
        reply = session.rpc("tools/call", {"name": "fast__echo", "arguments": {"message": "b"}})
        latencies.append((time.perf_counter() - start) * 1000)
        failures += "result" not in reply
    return latencies, failures


def run(workers: int, calls: int, streams: int, seconds: float, threads: int | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mmi", dir="/tmp"))
    processes: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAMCP_", "DATABASE_URL"))}
    try:
        slow_port, fast_port, gateway_port = free_port(), free_port(), free_port()
        for port, extra in ((slow_port, ["--sleep-tool"]), (fast_port, ["--json-response"])):
            processes.append(subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "example_server.py"), "--port", str(port), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        gateway_env = {**env, "METAMCP_DATA_DIR": str(workdir / "data"), "METAMCP_PORT": str(gateway_port),
                       "METAMCP_WORKERS": str(workers), "METAMCP_LOG_LEVEL": "WARNING",
                       "METAMCP_MAX_INFLIGHT_PER_KEY": str(calls), "METAMCP_RATE_LIMIT": "1000000"}
        if threads:
            gateway_env["METAMCP_THREADS"] = str(threads)
        gateway = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:metamcp.gunicorn_conf"],
            cwd=ROOT, env=gateway_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(gateway)
        base = f"http://127.0.0.1:{gateway_port}"
        wait_for(base + "/health")
        for port in (slow_port, fast_port):
            wait_for(f"http://127.0.0.1:{port}/mcp")
        keys = {}
        for name in ("admin", "slow", "listen", "fast"):
            created = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "keys.py"), "create", "--name", name, "--json"],
                cwd=ROOT, env=gateway_env, capture_output=True, text=True, check=True)
            keys[name] = json.loads(created.stdout)["key"]
        for name, port in (("slow", slow_port), ("fast", fast_port)):
            requests.post(f"{base}/api/v1/mcp/servers", headers={"X-API-Key": keys["admin"]}, timeout=30,
                          json={"name": name, "transport": "streamable_http",
                                "url": f"http://127.0.0.1:{port}/mcp"}).raise_for_status()
        fast = [McpSession(base + "/mcp", {"X-API-Key": keys["fast"]}) for _ in range(2)]
        for session in fast:  # warm every worker's upstream session and caches
            _timed_calls(session, time.monotonic() + 2)
        for _ in range(4 * workers):  # new connections, so every worker lists the slow upstream
            McpSession(base + "/mcp", {"X-API-Key": keys["admin"]}).rpc(
                "tools/call", {"name": "slow__sleep", "arguments": {"seconds": 0}})
        quiet, _ = _timed_calls(fast[0], time.monotonic() + 5)
        idle = _snapshot(gateway.pid)

        parent, child = multiprocessing.get_context("spawn").Pipe()
        load = multiprocessing.get_context("spawn").Process(
            target=_load_main, args=(child, gateway_port, keys["listen"], keys["slow"], streams, calls, seconds))
        load.start()
        opened = parent.recv()["streams"]
        time.sleep(2)
        with_streams = _snapshot(gateway.pid)
        time.sleep(10)  # streams idle: what the standing-stream loop costs
        idle_cpu = (_snapshot(gateway.pid)["cpu"] - with_streams["cpu"]) / 10
        parent.send("go")
        parent.recv()  # calls sent
        time.sleep(4)  # past the burst of 500 requests arriving: the steady state is timed
        loaded: list[float] = []
        failures = 0
        lock = threading.Lock()

        def timed(session: McpSession) -> None:
            nonlocal failures
            mine, failed = _timed_calls(session, time.monotonic() + seconds - 8)
            with lock:
                loaded.extend(mine)
                failures += failed

        timers = [threading.Thread(target=timed, args=(s,)) for s in fast]
        for timer in timers:
            timer.start()
        peak = _snapshot(gateway.pid)
        time.sleep(seconds / 2 - 4)
        peak = max(peak, _snapshot(gateway.pid), key=lambda s: s["rss_mb"])
        for timer in timers:
            timer.join()
        outcome = parent.recv()
        results = outcome["calls"]
        parent.send("stop")
        load.join(timeout=60)

        ok = [r for r in results if r[0] == 200 and r[2]]
        statuses: dict[int, int] = {}
        for status, _elapsed, _good in results:
            statuses[status] = statuses.get(status, 0) + 1
        per_stream_kb = (with_streams["rss_mb"] - idle["rss_mb"]) * 1024 / max(1, streams)
        per_call_kb = (peak["rss_mb"] - with_streams["rss_mb"]) * 1024 / max(1, calls)
        load_avg = os.getloadavg()
        print(f"slow-call isolation: {calls} x {seconds:g} s tools/call (one key), {streams} GET streams "
              f"(another key), {workers} workers; load average {load_avg[0]:.2f} at the end")
        print(f"{'short tools/call (third key)':<34}{'calls':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'failed':>8}")
        for label, values, failed in (("quiet gateway", quiet, 0), ("under the load", loaded, failures)):
            print(f"{label:<34}{len(values):>7}{pct(values, 50):>9.2f}{pct(values, 99):>9.2f}"
                  f"{max(values):>9.2f}{failed:>8}")
        print(f"GET streams opened: {opened}; slow calls answered: {statuses} "
              f"({len(ok)} with the result, {min((r[1] for r in ok), default=0):.1f}-"
              f"{max((r[1] for r in ok), default=0):.1f} s)")
        for error in outcome["errors"]:
            print(f"  a slow call that failed: {error.strip()}")
        print(f"{'workers':<34}{'RSS MB':>9}{'threads':>9}")
        for label, snap in (("idle (warm)", idle), (f"+ {streams} streams", with_streams),
                            (f"+ {calls} calls (peak)", peak)):
            print(f"{label:<34}{snap['rss_mb']:>9.1f}{snap['threads']:>9.0f}")
        print(f"per open stream {per_stream_kb:.0f} KB, per waiting call {per_call_kb:.0f} KB; "
              f"{streams} idle streams cost {idle_cpu * 100:.1f}% of a core")
        return 0
    finally:
        stop_all(processes, 30)
        shutil.rmtree(workdir, ignore_errors=True)
