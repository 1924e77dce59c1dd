#!/usr/bin/env python3
"""Micro-benchmark of what metrics cost each request (metamcp.metrics), in this process: the
sink's record() of a routed tools/call and of a tools/list, and the database and admission
instrumentation points. Prints microseconds per call, with prometheus_client in multiprocess
mode (as under gunicorn: values written to files in a temporary PROMETHEUS_MULTIPROC_DIR)
and in single-process mode.

    .venv/bin/python scripts/bench_metrics.py [--rounds 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(rounds: int, step: Callable[[], None]) -> float:
    """Microseconds per call of `step`."""
    step()
    started = time.perf_counter()
    for _ in range(rounds):
        step()
    return (time.perf_counter() - started) / rounds * 1e6


def measure(rounds: int) -> None:
    sys.path.insert(0, str(ROOT))
    from metamcp import metrics
    from metamcp.observe import Observation

    instruments = metrics.enable(16)

    def observation(method: str) -> Observation:
        obs = Observation("bench", "POST", "/mcp", "/mcp", "127.0.0.1")
        obs.status, obs.duration, obs.mcp_method = 200, 0.002, method
        op = obs.operation(method, "bench__echo" if method == "tools/call" else None)
        if method == "tools/call":
            op.routed("bench", "echo")
            op.upstream_seconds = 0.0015
        return obs

    call, listing = observation("tools/call"), observation("tools/list")

    def transaction() -> None:
        metrics.db_checked_out()
        metrics.db_returned(0.001)

    def admission() -> None:
        metrics.call_admitted()
        metrics.call_released()

    mode = "multiprocess" if instruments.multiprocess else "single process"
    for label, step in (("record(tools/call)", lambda: metrics.record(call)),
                        ("record(tools/list)", lambda: metrics.record(listing)),
                        ("db transaction", transaction), ("tool call admission", admission)):
        print(f"{mode:<15} {label:<22} {timed(rounds, step):7.2f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # this process's mode only
    args = parser.parse_args()
    if args.one:
        measure(args.rounds)
        return 0
    directory = tempfile.mkdtemp(prefix="metamcp-bench-metrics-")
    try:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        for extra in ({"PROMETHEUS_MULTIPROC_DIR": directory}, {}):
            subprocess.run([sys.executable, __file__, "--one", "--rounds", str(args.rounds)],
                           env={**env, **extra}, check=True, timeout=600)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
