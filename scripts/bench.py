#!/usr/bin/env python3
"""Benchmark: the same tools/call direct to an upstream, through the gateway's /mcp and
through an endpoint (a namespace with a renamed tool), as REST, and warm aggregated
tools/lists over many upstreams. Prints tables.

Each tools/call is measured in both protocol eras: a 2025-06-18 client on its session
(initialize first, `Mcp-Session-Id` on every call) and a 2026-07-28 stateless client (no
session: `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers and `_meta` version,
clientInfo and capabilities on every request, as the official client sends them), direct and
through /mcp; the gateway-added p50 of each era is printed side by side. Exits 1 when the
gateway refuses the stateless call (its row says why).

    .venv/bin/python scripts/bench.py [--calls 2000] [--upstreams 10] [--tools 50]
    .venv/bin/python scripts/bench.py --isolation [--slow-calls 500] [--streams 1000]
    .venv/bin/python scripts/bench.py --ops [--rounds 2000]

`--isolation` runs the slow-call isolation section instead (scripts/bench_isolation.py): long
tool calls and open GET streams from two keys while a third key's short tools/call is timed.
`--ops` runs the operating-cost section instead (scripts/bench_ops.py): gateways with metrics,
audit and access log off and on, measured interleaved.

Starts everything it measures on 127.0.0.1 (example upstreams, an embedded PostgreSQL and the
gateway under gunicorn, as `make run` does) in a temporary directory, and stops it by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import bench_isolation
import bench_ops
import requests
from bench_harness import (
    ROOT,
    McpSession,
    StatelessClient,
    free_port,
    measure,
    pct,
    stop_all,
    wait_for,
)

from metamcp.mcp.upstream.stdio import StdioUpstream
from metamcp.servers import ServerConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--upstreams", type=int, default=10, help="upstreams for the list test")
    parser.add_argument("--tools", type=int, default=50, help="tools per upstream for the list test")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--isolation", action="store_true", help="run the slow-call isolation section")
    parser.add_argument("--slow-calls", type=int, default=500, help="isolation: concurrent long calls")
    parser.add_argument("--slow-seconds", type=float, default=20, help="isolation: length of a long call")
    parser.add_argument("--streams", type=int, default=1000, help="isolation: open GET streams")
    parser.add_argument("--threads", type=int, default=None, help="isolation: METAMCP_THREADS")
    parser.add_argument("--ops", action="store_true",
                        help="run the operating-cost section (metrics, audit, access log off and on)")
    parser.add_argument("--rounds", type=int, default=2000, help="ops: interleaved rounds at c=1")
    parser.add_argument("--bursts", type=int, default=5, help="ops: alternating bursts at c=32 per gateway")
    args = parser.parse_args()
    if args.isolation:
        return bench_isolation.run(args.workers, args.slow_calls, args.streams, args.slow_seconds, args.threads)
    if args.ops:
        return bench_ops.run(args.workers, args.rounds, args.calls, args.bursts)

    workdir = Path(tempfile.mkdtemp(prefix="mmb", dir="/tmp"))
    processes: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAMCP_", "DATABASE_URL"))}
    try:
        ports = [free_port() for _ in range(args.upstreams)]
        for port in ports:
            processes.append(subprocess.Popen(
                [sys.executable, str(ROOT / "scripts" / "example_server.py"), "--port", str(port),
                 "--json-response", "--extra-tools", str(args.tools - 5)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        gateway_port = free_port()
        gateway_env = {**env, "METAMCP_DATA_DIR": str(workdir / "data"), "METAMCP_PORT": str(gateway_port),
                       "METAMCP_WORKERS": str(args.workers), "METAMCP_LOG_LEVEL": "WARNING",
                       "METAMCP_THREADS": "16",
                       # Limits high enough never to refuse, so their checks still run and are timed.
                       "METAMCP_RATE_LIMIT": "1000000", "METAMCP_MAX_INFLIGHT_PER_KEY": "1000000"}
        processes.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:metamcp.gunicorn_conf"],
            cwd=ROOT, env=gateway_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{gateway_port}"
        wait_for(base + "/health")
        for port in ports:
            wait_for(f"http://127.0.0.1:{port}/mcp")
        created = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "keys.py"), "create", "--name", "bench", "--json"],
            cwd=ROOT, env=gateway_env, capture_output=True, text=True, check=True)
        key = json.loads(created.stdout)["key"]
        auth = {"X-API-Key": key}
        namespace = requests.post(f"{base}/api/v1/namespaces", headers=auth, timeout=30,
                                  json={"name": "bench"}).json()["id"]
        for index, port in enumerate(ports):
            server = requests.post(f"{base}/api/v1/mcp/servers", headers=auth, timeout=30, json={
                "name": f"up{index}", "transport": "streamable_http",
                "url": f"http://127.0.0.1:{port}/mcp"})
            server.raise_for_status()
            requests.put(f"{base}/api/v1/namespaces/{namespace}/servers/{server.json()['id']}",
                         headers=auth, timeout=30, json={"status": "active"}).raise_for_status()
        requests.post(f"{base}/api/v1/endpoints", headers=auth, timeout=30,
                      json={"name": "bench", "namespace_id": namespace}).raise_for_status()
        tools = requests.get(f"{base}/api/v1/namespaces/{namespace}/tools", headers=auth, timeout=60).json()
        echo_id = next(t["id"] for t in tools["tools"] if t["name"] == "up0__echo")
        requests.patch(f"{base}/api/v1/namespaces/{namespace}/tools/{echo_id}", headers=auth, timeout=30,
                       json={"name": "say", "description": "Echo, renamed"}).raise_for_status()
        endpoint = base + "/metamcp/bench"

        direct_url = f"http://127.0.0.1:{ports[0]}/mcp"
        echo = {"name": "echo", "arguments": {"message": "bench"}}
        echo_via = {"name": "up0__echo", "arguments": {"message": "bench"}}
        rows: list[tuple[str, float, float, float, float, float]] = []
        modern_rows: list[tuple[str, float, float, float, float, float]] = []
        unserved = None  # why the gateway did not serve a stateless 2026-07-28 call
        echo_renamed = {"name": "say", "arguments": {"message": "bench"}}
        for label, client, url, headers, params, table in (
                ("direct", McpSession, direct_url, {}, echo, rows),
                ("gateway", McpSession, base + "/mcp", auth, echo_via, rows),
                ("endpoint", McpSession, endpoint + "/mcp", auth, echo_renamed, rows),
                ("direct", StatelessClient, direct_url, {}, echo, modern_rows),
                ("gateway", StatelessClient, base + "/mcp", auth, echo_via, modern_rows)):
            sessions = [client(url, headers) for _ in range(32)]
            check = sessions[0].rpc("tools/call", params)  # warm-up, and a check
            if "result" not in check and client is StatelessClient and label == "gateway":
                unserved = check.get("error", check)
                continue
            assert "result" in check, (label, client.__name__, check)

            def call(session: McpSession, params: dict[str, Any] = params) -> Any:
                return session.rpc("tools/call", params)

            measure(sessions[:8], 200, call)
            latencies, rate1 = measure(sessions[:1], args.calls, call)
            _, rate8 = measure(sessions[:8], args.calls, call)
            _, rate32 = measure(sessions, args.calls, call)
            table.append((label, pct(latencies, 50), pct(latencies, 99), rate1, rate8, rate32))

        lister = McpSession(base + "/mcp", auth)
        first = lister.rpc("tools/list", {})
        count = len(first["result"]["tools"])
        list_latencies, _ = measure([lister], 300, lambda s: s.rpc("tools/list", {}))
        endpoint_lister = McpSession(endpoint + "/mcp", auth)
        assert any(t["name"] == "say" for t in endpoint_lister.rpc("tools/list", {})["result"]["tools"])
        endpoint_list_latencies, _ = measure([endpoint_lister], 300, lambda s: s.rpc("tools/list", {}))

        rest = [requests.Session() for _ in range(8)]

        def rest_call(session: requests.Session) -> Any:
            reply = session.post(endpoint + "/api/say", headers=auth, json={"message": "bench"}, timeout=30)
            reply.raise_for_status()

        measure(rest, 200, rest_call)
        rest_latencies, rest_rate1 = measure(rest[:1], args.calls, rest_call)
        _, rest_rate8 = measure(rest, args.calls, rest_call)

        # Stdio: the example server as a child, direct (our client in this process, over its
        # pipes) and through the gateway (each gateway worker runs its own child).
        stdio_args = [str(ROOT / "scripts" / "example_server.py"), "--transport", "stdio"]
        requests.post(f"{base}/api/v1/mcp/servers", headers=auth, timeout=30, json={
            "name": "kid", "transport": "stdio", "command": sys.executable,
            "args": stdio_args}).raise_for_status()
        direct_stdio = StdioUpstream(
            ServerConfig(uuid.uuid4(), "kid", "stdio", None, sys.executable, stdio_args, {}, None, {},
                         None, True), connect_timeout=5, read_timeout=30)
        stdio_rows = []
        try:
            for label, targets, call_stdio in (
                ("direct", [direct_stdio] * 32,
                 lambda u: u.request("tools/call", {"name": "echo", "arguments": {"message": "b"}})),
                ("gateway", [McpSession(base + "/mcp", auth) for _ in range(32)],
                 lambda s: s.rpc("tools/call", {"name": "kid__echo", "arguments": {"message": "b"}})),
            ):
                measure(targets[:8], 200, call_stdio)  # warm-up: every worker starts its child
                latencies, rate1 = measure(targets[:1], args.calls, call_stdio)
                _, rate8 = measure(targets[:8], args.calls, call_stdio)
                _, rate32 = measure(targets, args.calls, call_stdio)
                stdio_rows.append((label, pct(latencies, 50), pct(latencies, 99), rate1, rate8, rate32))
        finally:
            direct_stdio.close()

        print(f"tools/call echo, {args.calls} calls per cell, gateway with {args.workers} workers")
        print(f"{'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'calls/s c=1':>13}{'c=8':>9}{'c=32':>9}")
        for label, p50, p99, r1, r8, r32 in rows:
            print(f"{label:<10}{p50:>9.2f}{p99:>9.2f}{r1:>13.0f}{r8:>9.0f}{r32:>9.0f}")
        print(f"{'added':<10}{rows[1][1] - rows[0][1]:>9.2f}{rows[1][2] - rows[0][2]:>9.2f}"
              "   (gateway /mcp over direct)")
        print(f"{'added':<10}{rows[2][1] - rows[0][1]:>9.2f}{rows[2][2] - rows[0][2]:>9.2f}"
              "   (endpoint, renamed tool, over direct)")
        print(f"{'REST':<10}{pct(rest_latencies, 50):>9.2f}{pct(rest_latencies, 99):>9.2f}"
              f"{rest_rate1:>13.0f}{rest_rate8:>9.0f}   (POST /metamcp/bench/api/say)")
        print()
        print("the same tools/call at 2026-07-28: stateless (no session; version, method and name in "
              "headers and _meta)")
        print(f"{'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'calls/s c=1':>13}{'c=8':>9}{'c=32':>9}")
        for label, p50, p99, r1, r8, r32 in modern_rows:
            print(f"{label:<10}{p50:>9.2f}{p99:>9.2f}{r1:>13.0f}{r8:>9.0f}{r32:>9.0f}")
        if unserved is None:
            added_2025, added_2026 = rows[1][1] - rows[0][1], modern_rows[1][1] - modern_rows[0][1]
            print(f"{'added':<10}{added_2026:>9.2f}{modern_rows[1][2] - modern_rows[0][2]:>9.2f}"
                  "   (gateway /mcp over direct)")
            verdict = "no higher" if added_2026 <= added_2025 else "HIGHER"
            print(f"gateway-added p50: 2025-06-18 session {added_2025:.2f} ms, 2026-07-28 stateless "
                  f"{added_2026:.2f} ms (stateless {verdict})")
        else:
            print(f"{'gateway':<10} not served: the gateway refused a stateless 2026-07-28 tools/call: "
                  f"{json.dumps(unserved)}")
        print()
        print("stdio tools/call echo (scripts/example_server.py as a child)")
        for label, p50, p99, r1, r8, r32 in stdio_rows:
            print(f"{label:<10}{p50:>9.2f}{p99:>9.2f}{r1:>13.0f}{r8:>9.0f}{r32:>9.0f}")
        print(f"{'added':<10}{stdio_rows[1][1] - stdio_rows[0][1]:>9.2f}"
              f"{stdio_rows[1][2] - stdio_rows[0][2]:>9.2f}")
        print()
        print(f"warm aggregated tools/list: {count} tools from {args.upstreams} upstreams, "
              f"p50 {pct(list_latencies, 50):.2f} ms, p99 {pct(list_latencies, 99):.2f} ms")
        print(f"the same through the endpoint (namespace, one override): "
              f"p50 {pct(endpoint_list_latencies, 50):.2f} ms, p99 {pct(endpoint_list_latencies, 99):.2f} ms")
        return 0 if unserved is None else 1
    finally:
        stop_all(processes, 20)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
