"""A worker's threads: admission of long holders (tool calls, standing streams) within a budget
that keeps a reserve for short requests, and one watcher that notices departed stream clients.

gunicorn's gthread worker queues a request when every thread is busy, so a worker full of slow
calls would stall everything behind them. Long holders therefore take a place in a budget of
`threads - reserved` first; past it they get 503 with Retry-After at once, and short requests
(initialize, lists, REST, notifications) always find one of the reserved threads.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from metamcp import metrics
from metamcp.errors import MetaMCPError
from metamcp.limits import Limits, Ticket

logger = logging.getLogger(__name__)

#: Seconds a client is told to wait when the worker is saturated.
BUSY_RETRY_AFTER = 2
#: How often the watcher looks whether the worker is stopping.
STOP_CHECK_SECONDS = 1.0


class Saturated(MetaMCPError):
    """The worker's budget for long calls and streams is spent: 503 with Retry-After."""

    status, code = 503, "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.retry_after = BUSY_RETRY_AFTER


class ThreadBudget:
    """Places for long holders in one worker: `threads - reserved` of them."""

    def __init__(self, threads: int, reserved: int) -> None:
        self.limit = max(1, threads - reserved)
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def hold(self, what: str) -> Callable[[], None]:
        """Take a place or raise Saturated; returns the (idempotent) release."""
        with self._lock:
            if self._held >= self.limit:
                metrics.limit_rejected(metrics.BUSY)
                raise Saturated(f"Service Unavailable: this worker is busy with {self.limit} long calls "
                                f"and streams; retry in {BUSY_RETRY_AFTER} s ({what})")
            self._held += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._held -= 1

        return release


class Admission:
    """A tool call enters if its key is under its in-flight cap and the worker has room."""

    def __init__(self, limits: Limits, budget: ThreadBudget) -> None:
        self._limits = limits
        self._budget = budget

    def call(self, key_id: int | None) -> Callable[[], None]:
        """Raises LimitExceeded (429) or Saturated (503); returns the release of both."""
        ticket: Ticket = self._limits.enter_call(key_id)
        try:
            free = self._budget.hold("tool call")
        except Saturated:
            ticket.release()
            raise
        metrics.call_admitted()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            free()
            ticket.release()
            metrics.call_released()

        return release


class HangupWatch:
    """One thread per process watching the client sockets of standing streams (epoll): a client
    that hangs up, or the worker stopping, calls that stream's `wake`, so a stream thread sleeps
    until it has something to send instead of polling its socket."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._epoll: Any = None
        self._wakers: dict[int, Callable[[], None] | None] = {}
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None, wake: Callable[[], None]) -> int | None:
        """Watch `sock` (None or TLS: not watched; the stream ends when a write fails)."""
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return None
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            return None
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, name="metamcp-hangups", daemon=True).start()
            self._wakers[fd] = wake
            try:
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
            except OSError:
                self._wakers.pop(fd, None)
                return None
        return fd

    def unwatch(self, fd: int | None) -> None:
        if fd is None:
            return
        with self._lock:
            if self._wakers.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass  # already gone with its socket

    def _run(self) -> None:
        while True:
            try:
                events = self._epoll.poll(STOP_CHECK_SECONDS)
            except InterruptedError:
                continue
            if self._stopping.is_set():
                with self._lock:
                    wakers = list(self._wakers.values())
                for waker in wakers:
                    if waker is not None:
                        waker()
                continue
            for fd, _mask in events:
                # Readable: a hang-up, or (rarely) bytes the client sent; either way the stream
                # looks once and we stop watching, so a chatty client cannot spin this loop.
                with self._lock:
                    wake = self._wakers.pop(fd, None)
                    if wake is not None:
                        try:
                            self._epoll.unregister(fd)
                        except (OSError, ValueError):
                            pass
                if wake is not None:
                    try:
                        wake()
                    except Exception:  # noqa: BLE001 - a shared thread: one bad callback must not end it
                        logger.exception("waking a standing stream failed")
