"""The cost of operating the gateway (bench.py --ops): the same tools/call through gateways that
differ only in what they record, measured interleaved so that the machine's drift hits all alike.

Four gateways under gunicorn, each with its own embedded PostgreSQL, in front of one example
upstream: `off` (METAMCP_METRICS=off, METAMCP_AUDIT=off), `off-again` (the same: the noise floor
of the comparison), `on` (metrics and the audit log, the defaults) and `on+log` (also the JSON
access log at INFO, written to a file). At concurrency 1 each round makes one call direct and
one through each gateway, in an order shuffled every round (so no gateway always follows the
one whose after-response work it might meet), so gateway-added p50 is compared call for call;
at concurrency 32 the gateways take turns with bursts (in shuffled order too), several times,
and the median throughput of each is kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from bench_harness import ROOT, McpSession, free_port, measure, pct, stop_all, wait_for

#: What each gateway is started with, besides its port and data directory.
CONFIGS: dict[str, dict[str, str]] = {
    "off": {"METAMCP_METRICS": "off", "METAMCP_AUDIT": "off", "METAMCP_LOG_LEVEL": "WARNING"},
    "off-again": {"METAMCP_METRICS": "off", "METAMCP_AUDIT": "off", "METAMCP_LOG_LEVEL": "WARNING"},
    "on": {"METAMCP_METRICS": "on", "METAMCP_AUDIT": "on", "METAMCP_LOG_LEVEL": "WARNING"},
    "on+log": {"METAMCP_METRICS": "on", "METAMCP_AUDIT": "on", "METAMCP_LOG_LEVEL": "INFO",
               "METAMCP_LOG_FORMAT": "json"},
}


def run(workers: int, rounds: int, burst_calls: int, bursts: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mmo", dir="/tmp"))
    processes: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAMCP_", "DATABASE_URL"))}
    try:
        upstream_port = free_port()
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "example_server.py"), "--port", str(upstream_port),
             "--json-response"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        bases: dict[str, str] = {}
        envs: dict[str, dict[str, str]] = {}
        for name, config in CONFIGS.items():
            port = free_port()
            envs[name] = {**env, **config, "METAMCP_DATA_DIR": str(workdir / name), "METAMCP_PORT": str(port),
                          "METAMCP_WORKERS": str(workers), "METAMCP_THREADS": "16",
                          "METAMCP_RATE_LIMIT": "1000000", "METAMCP_MAX_INFLIGHT_PER_KEY": "1000000"}
            log = (workdir / f"{name}.log").open("wb")
            processes.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:metamcp.gunicorn_conf"],
                cwd=ROOT, env=envs[name], stdout=log, stderr=log))
            bases[name] = f"http://127.0.0.1:{port}"
        direct_url = f"http://127.0.0.1:{upstream_port}/mcp"
        wait_for(direct_url)
        sessions: dict[str, list[McpSession]] = {"direct": [McpSession(direct_url) for _ in range(32)]}
        for name, base in bases.items():
            try:
                wait_for(base + "/health", 120)
            except SystemExit:
                print((workdir / f"{name}.log").read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            created = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "keys.py"), "create", "--name", "bench", "--json"],
                cwd=ROOT, env=envs[name], capture_output=True, text=True, check=True)
            auth = {"X-API-Key": json.loads(created.stdout)["key"]}
            requests.post(f"{base}/api/v1/mcp/servers", headers=auth, timeout=30, json={
                "name": "up", "transport": "streamable_http", "url": direct_url}).raise_for_status()
            sessions[name] = [McpSession(base + "/mcp", auth) for _ in range(32)]
        params = {"direct": {"name": "echo", "arguments": {"message": "bench"}}}
        for name in bases:
            params[name] = {"name": "up__echo", "arguments": {"message": "bench"}}
        calls = {name: (lambda s, p=params[name]: s.rpc("tools/call", p)) for name in sessions}
        for name, group in sessions.items():  # warm-up: upstream clients, caches, all 32 threads
            assert "result" in calls[name](group[0]), name
            measure(group, min(burst_calls, 640), calls[name])

        shuffled = random.Random(13)  # the same orders every run
        names = list(sessions)
        latencies: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            shuffled.shuffle(names)
            for name in names:
                started = time.perf_counter()
                calls[name](sessions[name][0])
                latencies[name].append((time.perf_counter() - started) * 1000)
        rates: dict[str, list[float]] = {name: [] for name in bases}
        order = list(bases)
        for _ in range(bursts):
            shuffled.shuffle(order)
            for name in order:
                rates[name].append(measure(sessions[name], burst_calls, calls[name])[1])

        direct = pct(latencies["direct"], 50)
        print(f"the cost of metrics, audit and access log: tools/call echo, {rounds} interleaved rounds at c=1, "
              f"{bursts} alternating bursts of {burst_calls} calls at c=32, {workers} workers per gateway")
        print(f"{'gateway':<10}{'p50 ms':>9}{'added p50':>11}{'p99 ms':>9}{'calls/s c=32':>14}")
        print(f"{'direct':<10}{direct:>9.2f}{'':>11}{pct(latencies['direct'], 99):>9.2f}")
        medians = {name: statistics.median(rates[name]) for name in bases}
        added = {name: pct(latencies[name], 50) - direct for name in bases}
        for name in bases:
            print(f"{name:<10}{pct(latencies[name], 50):>9.2f}{added[name]:>11.2f}"
                  f"{pct(latencies[name], 99):>9.2f}{medians[name]:>14.0f}")
        for name in ("off-again", "on", "on+log"):
            growth = added[name] - added["off"]
            loss = (1 - medians[name] / medians["off"]) * 100
            print(f"{name} over off: gateway-added p50 {growth:+.3f} ms (budget +0.1), "
                  f"c=32 throughput {-loss:+.1f} % (budget -5 %)")
        return 0
    finally:
        stop_all(processes, 20)
        shutil.rmtree(workdir, ignore_errors=True)
