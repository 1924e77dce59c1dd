"""metamcp.stopping: the stop runs on its own thread with the first grace asked, and a process
whose thread is stuck still ends within its exit bound (the whole stop: test_graceful_stop_e2e)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from metamcp.stopping import WorkerStop

from .conftest import ROOT


class FakeServices:
    """Records the stop it is asked for (a pure-logic test: nothing else of Services is used)."""

    def __init__(self) -> None:
        self.stops: list[tuple[float, str]] = []

    def stop(self, grace: float) -> None:
        self.stops.append((grace, threading.current_thread().name))


def test_the_stop_runs_once_on_its_thread_with_the_first_grace_asked() -> None:
    services = FakeServices()
    stop = WorkerStop(services)
    time.sleep(0.05)
    assert services.stops == [] and not stop.done.is_set()  # nothing before it is asked
    stop.ask(0.25)  # SIGTERM
    stop.ask(0.0)  # then Ctrl-C: the stop under way is not started again
    assert stop.done.wait(2)
    time.sleep(0.05)
    assert services.stops == [(0.25, "metamcp-stop")]


def test_a_process_with_a_stuck_thread_ends_within_its_exit_bound() -> None:
    script = textwrap.dedent("""
        import logging, threading, time
        from metamcp.stopping import exit_within
        logging.basicConfig()
        threading.Thread(target=time.sleep, args=(60,), name="stuck-upstream-read").start()
        exit_within(0.5)
    """)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert "1 threads still busy" in done.stderr and "stuck-upstream-read" in done.stderr
    assert took < 10  # without the bound: 60 s (Python joins the thread before it exits)
