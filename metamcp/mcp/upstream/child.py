"""One running stdio child: its process, the calls waiting on its stdout, how it is stopped."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any

from metamcp.mcp.upstream.call import Inboxes

logger = logging.getLogger(__name__)

#: Seconds between the polite steps of stopping a child: stdin closed, SIGTERM, SIGKILL.
GRACE_SECONDS = 2.0


class Child(Inboxes):
    """One running child process and the calls waiting on its stdout."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        super().__init__()
        self.process = process
        self.started = time.monotonic()
        self.last_used = self.started
        self.write_lock = threading.Lock()
        #: Whether its place among the worker's children was given back.
        self.released = False
        self.release_lock = threading.Lock()
        #: Whether its unplanned exit was counted (by its reader or by the next request;
        #: under release_lock).
        self.exit_noted = False
        #: It answered server/discover: it speaks 2026-07-28 for its life (no initialize).
        self.modern = False
        #: Its open subscriptions/listen request: (request id, generation of the filter sent).
        self.listening: tuple[int, int] | None = None

    def write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        stdin = self.process.stdin
        assert stdin is not None
        with self.write_lock:
            stdin.write(data)
            stdin.flush()

    def stop(self) -> None:
        """Close stdin, then SIGTERM the group, then SIGKILL it; always wait for the exit."""
        self.fail_all()
        process = self.process
        for step in ("stdin", "term", "kill"):
            if process.poll() is not None:
                break
            try:
                if step == "stdin" and process.stdin is not None:
                    process.stdin.close()
                elif step == "term":
                    os.killpg(process.pid, signal.SIGTERM)
                elif step == "kill":
                    os.killpg(process.pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
            try:
                process.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind in its group
        except (OSError, ProcessLookupError):
            pass
        if process.poll() is None:
            process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
