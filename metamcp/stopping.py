"""How a gunicorn worker stops quickly, even while upstreams hang (see gunicorn_conf's hooks).

gthread waits for every open connection before the worker exits, and Python waits for every
request and pool thread before the process ends: one request blocked on an upstream that never
answers used to hold the worker until gunicorn's graceful_timeout and its SIGKILL. So on SIGTERM
the worker gives calls in flight a short grace, then answers those still waiting that the
gateway is stopping and ends its standing streams (Services.stop); on SIGINT (Ctrl-C) it does so
at once. A thread blocked in what cannot be interrupted (an upstream's handshake, the database)
no longer holds the exit: from its exit hook on, a worker waits at most EXIT_WAIT seconds for
its closing and its threads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds the calls in flight at SIGTERM get to finish before they are answered "stopping".
CALL_GRACE = 0.5
#: Seconds a worker may spend from its exit hook on: closing what it holds, joining its threads.
EXIT_WAIT = 1.0


class WorkerStop:
    """Runs `services.stop(grace)` on a thread of its own once asked.

    Asked from signal handlers, which only set events here: a handler runs on the main thread
    between two bytecodes, possibly inside a lock the stop would need (starting a thread takes
    one), so the work is done by a thread started beforehand."""

    def __init__(self, services: Any) -> None:
        self._services = services
        self._asked = threading.Event()
        self._grace = CALL_GRACE
        self.done = threading.Event()
        threading.Thread(target=self._run, name="metamcp-stop", daemon=True).start()

    def ask(self, grace: float = CALL_GRACE) -> None:
        """Stop, giving calls in flight `grace` seconds (the first request decides). Signal-safe."""
        if not self._asked.is_set():
            self._grace = grace
            self._asked.set()

    def _run(self) -> None:
        self._asked.wait()
        try:
            self._services.stop(self._grace)
        except Exception:  # noqa: BLE001 - boundary: the worker still exits (close() follows)
            logger.exception("stopping the worker's calls and streams failed")
        finally:
            self.done.set()


def exit_within(seconds: float = EXIT_WAIT) -> None:
    """End this process `seconds` from now if it is still closing or joining its threads then
    (a daemon thread: it dies with the process). For the end of a worker: what still runs then
    is stuck in I/O that nothing interrupts, and would hold the process until the master's
    SIGKILL. Its stdio children go with it (see metamcp.mcp.children)."""

    def watch() -> None:
        threading.Event().wait(seconds)
        stuck = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
        logger.warning("worker %s: %s threads still busy %ss after its exit hook (%s); exiting anyway",
                       os.getpid(), len(stuck), seconds, ", ".join(sorted(stuck)[:10]))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)

    threading.Thread(target=watch, name="metamcp-exit-watch", daemon=True).start()
