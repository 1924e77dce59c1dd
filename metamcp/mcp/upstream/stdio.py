"""Stdio upstreams: a supervised child process speaking newline-delimited JSON-RPC.

One child per (server, worker process), shared by every session of the worker; concurrent
calls are multiplexed by id. A child speaks one era for its life: it is asked `server/discover`
first (briefly: a 2025 server may never answer) and spoken to in 2026-07-28 if it lists it
(`_meta` on every request, a `subscriptions/listen` request kept open for its notifications),
else initialized as a 2025 server. The child runs in its own process group with a small inherited
environment; it is started on first use, restarted on the next request after it dies (with
exponential backoff after repeated crashes), stopped when idle, and always reaped.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import threading
import time
from typing import IO, Any

from metamcp import metrics
from metamcp.config import child_environment
from metamcp.mcp import jsonrpc, protocol
from metamcp.mcp.children import ChildRecords, spawn
from metamcp.mcp.protocol import META_SUBSCRIPTION, UNSUPPORTED_VERSION
from metamcp.mcp.upstream import era as eras
from metamcp.mcp.upstream.call import (
    PendingCall,
    UpstreamError,
    UpstreamTimeout,
    is_response,
)
from metamcp.mcp.upstream.child import GRACE_SECONDS, Child
from metamcp.mcp.upstream.interface import ClientMeta, Upstream
from metamcp.servers import ServerConfig
from metamcp.stdio_policy import StdioPolicy, StdioRefused

logger = logging.getLogger(__name__)

#: Lines of stderr kept per server, and the longest line kept.
STDERR_LINES = 500
STDERR_LINE_CHARS = 2000
#: Longest stdout line read; a longer one is skipped.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: A child that dies sooner than this after starting counts as crashing repeatedly.
STABLE_AFTER = 10.0
MAX_BACKOFF = 30.0
ROOTS_CHANGED = "notifications/roots/list_changed"
LISTEN = "subscriptions/listen"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"


class _ModernAfterAll(Exception):
    """initialize was answered -32022: the child took 2026-07-28 from a late-answered probe."""


class StdioUpstream(Upstream):
    """An upstream run as a child process of this worker, spoken to on its stdin and stdout."""

    def __init__(self, config: ServerConfig, *, start_timeout: float = 30.0,
                 idle_timeout: float = 600.0, children: threading.BoundedSemaphore | None = None,
                 stdio_policy: StdioPolicy | None = None, records: ChildRecords | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if not config.command:
            raise UpstreamError(f"upstream {config.name!r}: no command configured")
        self._config = config
        self._start_timeout = start_timeout
        self._idle_timeout = idle_timeout
        self._children = children
        #: Checked before every start: the operator may have switched stdio off since registration.
        self._policy = stdio_policy or StdioPolicy()
        #: Where this worker's child process groups are recorded for the master to reap.
        self._records = records
        self._child: Child | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.restarts = 0
        self.last_error: str | None = None
        self._crashes = 0
        self._restart_at = 0.0
        self._watchdog: threading.Thread | None = None

    # --- the Upstream interface ----------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout: float | None = None, client: ClientMeta | None = None) -> PendingCall:
        child = self._running()
        request_id = self._next_id()
        if child.modern:
            params = self._envelope(params, client)
        inbox, params = child.register(request_id, params)
        self._write(child, jsonrpc.request(request_id, method, params), request_id)

        def send_cancelled(reason: str | None) -> None:
            cancel: dict[str, Any] = {"requestId": request_id}
            if reason:
                cancel["reason"] = reason
            _write_quietly(child, jsonrpc.notification("notifications/cancelled", cancel))

        call = PendingCall(request_id, self._inbox_replies(inbox, timeout, f"calling {method}",
                                                           "the child's output"),
                           interrupt=lambda: inbox.put(None),
                           release=lambda _polite: child.forget(request_id),
                           send_cancelled=send_cancelled, respond=lambda m: _write_quietly(child, m))
        call.modern = child.modern
        return self._calls.add(call)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """To the child; 2026-07-28 has no roots/list_changed (roots are asked per call): dropped."""
        child = self._running()
        if child.modern and method == ROOTS_CHANGED:
            return
        self._write(child, jsonrpc.notification(method, params), None)

    @property
    def modern(self) -> bool | None:
        """Whether the running child speaks 2026-07-28 (None: none runs)."""
        child = self._child
        return child.modern if child is not None else None

    # --- 2026-07-28 notifications: one subscriptions/listen request per child ----------------

    def _listens_modern(self) -> bool:
        return self._running().modern and self._on_notification is not None

    def _refilter(self) -> None:
        child = self._child
        if child is not None and child.modern:
            self._listen(child)

    def _listen(self, child: Child) -> None:
        """(Re)send the child's subscriptions/listen with the current filter, cancelling the
        previous one."""
        if self._on_notification is None:
            return
        notifications, generation = self._listen_filter()
        request_id = self._next_id()
        previous, child.listening = child.listening, (request_id, generation)
        if previous is not None:
            _write_quietly(child, jsonrpc.notification("notifications/cancelled", {"requestId": previous[0]}))
        params = self._envelope({"notifications": notifications}, None)
        _write_quietly(child, jsonrpc.request(request_id, LISTEN, params))

    def _heard(self, child: Child, message: dict[str, Any]) -> None:
        """A notification not tied to a call: an acknowledgement of the child's current listen
        is recorded, the rest delivered."""
        if message["method"] == ACKNOWLEDGED:
            params = message.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            listening = child.listening
            if isinstance(meta, dict) and listening is not None and meta.get(META_SUBSCRIPTION) == listening[0]:
                self._acknowledge(message, listening[1])
            return
        self._deliver(message)

    def close(self) -> None:
        self._closed.set()
        with self._init_lock:
            child, self._child = self._child, None
        if child is not None:
            self._stop(child)
        super().close()

    # --- state for /health, the REST API and the logs endpoint --------------------------

    def state(self) -> dict[str, Any]:
        """This worker's child: running, pid, restarts, last error."""
        child = self._child
        running = child is not None and child.process.poll() is None
        return {"running": running, "pid": child.process.pid if running and child else None,
                "restarts": self.restarts, "last_error": self.last_error}

    def stderr_lines(self) -> list[str]:
        return list(self._stderr)

    # --- supervision -----------------------------------------------------------------------

    def _running(self) -> Child:
        """The live, initialized child; started (or restarted) here when there is none."""
        self._check_open()
        child = self._child
        if child is not None and child.alive and child.process.poll() is None:
            child.last_used = time.monotonic()
            return child
        with self._init_lock:
            child = self._child
            if child is not None and child.alive and child.process.poll() is None:
                return child
            if child is not None:
                # Count the crash now: its reader may not have seen it yet, and the backoff
                # must hold for this very request.
                code = child.process.poll()
                self._note_exit(child, f"exited with status {code}" if code is not None else "closed its output")
                self._stop(child)  # reap the dead one and free its place
            wait = self._restart_at - time.monotonic()
            if wait > 0:
                raise UpstreamError(f"upstream {self.name!r}: crashed {self._crashes} times in a "
                                    f"row; next start in {wait:.1f}s ({self.last_error})")
            child = self._start()
            self._child = child
            return child

    def _start(self) -> Child:
        config = self._config
        try:
            # With an allow-list, the file checked is the file run (no second PATH lookup).
            executable = self._policy.executable(config.command or "", config.cwd, config.env)
        except StdioRefused as e:
            self.last_error = e.message
            raise UpstreamError(f"upstream {self.name!r}: not started: {e.message}") from None
        if self._children is not None and not self._children.acquire(blocking=False):
            raise UpstreamError(f"upstream {self.name!r}: this worker runs as many stdio "
                                "children as METAMCP_STDIO_MAX_CHILDREN allows")
        try:
            # On the spawner thread, so the child dies with this worker (see children.py).
            process = spawn(
                [config.command or "", *config.args], executable=executable,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=config.cwd or None, env=child_environment(config.env),
                start_new_session=True)  # its own process group: signals reach all it spawns
        except OSError as e:
            if self._children is not None:
                self._children.release()
            self._record_crash(f"cannot start: {e.strerror or type(e).__name__}")
            raise UpstreamError(f"upstream {self.name!r}: cannot start the command "
                                f"({e.strerror or type(e).__name__})") from e
        if self._records is not None:
            self._records.add(process.pid)  # the group id: the child leads its own group
        child = Child(process)
        metrics.child_started(self.name)
        threading.Thread(target=self._read_stdout, args=(child,), daemon=True,
                         name=f"metamcp-stdio-{self.name}").start()
        threading.Thread(target=self._read_stderr, args=(process.stderr,), daemon=True,
                         name=f"metamcp-stderr-{self.name}").start()
        try:
            self._handshake(child)
        except UpstreamError:
            self._stop(child)
            raise
        logger.info("upstream %s: started pid %s", self.name, process.pid)
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch_idle, daemon=True,
                                              name=f"metamcp-idle-{self.name}")
            self._watchdog.start()
        return child

    def _handshake(self, child: Child) -> None:
        """server/discover first; initialize unless the child answered it with 2026-07-28."""
        discovered = self._discover(child)
        if discovered.modern:
            child.modern = True
            self._info = discovered.info
            logger.info("upstream %s: the child speaks 2026-07-28", self.name)
            self._listen(child)
            return
        try:
            self._initialize(child)
        except _ModernAfterAll:
            # It answered the probe too late and took the era from it (-32022 to initialize).
            child.modern = True
            self._info = {}
            self._listen(child)

    def _discover(self, child: Child) -> eras.Era:
        """The child's era from its answer to server/discover; 2025 when it gives none in time."""
        wait = min(self._start_timeout, eras.PROBE_SECONDS)
        request_id = self._next_id()
        inbox, _ = child.register(request_id, None)
        try:
            self._write(child, jsonrpc.request(request_id, eras.DISCOVER, self._envelope(None, None)),
                        request_id)
            replies = self._inbox_replies(inbox, wait, "probing server/discover", "the child's output")
            reply = next(m for m in replies if is_response(m))
        except UpstreamTimeout:
            return eras.LEGACY  # a 2025 server may say nothing to a request before initialize
        except UpstreamError as e:
            self._record_crash(f"exited during server/discover: {e.message}")
            raise
        finally:
            child.forget(request_id)
        return eras.verdict(self.name, reply)

    def _initialize(self, child: Child) -> None:
        request_id = self._next_id()
        inbox, _ = child.register(request_id, None)
        try:
            self._write(child, jsonrpc.request(request_id, "initialize", self._initialize_params()),
                        request_id)
            replies = self._inbox_replies(inbox, self._start_timeout, "initializing", "the child's output")
            reply = next(m for m in replies if is_response(m))
        except UpstreamTimeout:
            self._record_crash(f"no answer to initialize within {self._start_timeout:g}s")
            raise UpstreamTimeout(f"upstream {self.name!r}: the child did not answer initialize "
                                  f"within {self._start_timeout:g}s") from None
        except UpstreamError as e:
            self._record_crash(f"exited during initialize: {e.message}")
            raise
        finally:
            child.forget(request_id)
        error = reply.get("error")
        if isinstance(error, dict) and error.get("code") == UNSUPPORTED_VERSION:
            raise _ModernAfterAll
        self._info = self._accepted(reply)
        self._write(child, jsonrpc.notification("notifications/initialized"), None)

    def _write(self, child: Child, message: dict[str, Any], request_id: int | None) -> None:
        try:
            child.write(message)
        except OSError as e:
            if request_id is not None:
                child.forget(request_id)
            raise UpstreamError(f"upstream {self.name!r}: the child's input is closed "
                                f"(it exited)") from e

    def _read_stdout(self, child: Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        try:
            while True:
                line = stdout.readline(MAX_LINE_BYTES)
                if not line:
                    break
                if not line.endswith(b"\n") and len(line) >= MAX_LINE_BYTES:
                    logger.warning("upstream %s: skipped an over-long stdout line", self.name)
                    while line and not line.endswith(b"\n"):
                        line = stdout.readline(MAX_LINE_BYTES)
                    continue
                self._dispatch(child, line)
        except (OSError, ValueError):
            pass  # the pipe closed under us: the child is being stopped
        finally:
            child.fail_all()  # every call in flight on this child fails, and only those
            code = child.process.poll()
            if code is None:
                try:
                    code = child.process.wait(timeout=GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    code = None
            if child is self._child:
                self._note_exit(child, f"exited with status {code}" if code is not None else "closed its output")

    def _dispatch(self, child: Child, line: bytes) -> None:
        text = line.strip()
        if not text:
            return
        try:
            message = jsonrpc.validate(jsonrpc.parse_body(text))
        except jsonrpc.RpcError as e:
            logger.info("upstream %s: skipped a stdout line that is not JSON-RPC (%s)", self.name, e.message)
            request_id = jsonrpc.leading_id(text) if e.data else None  # data: the line was too deep
            if request_id is not None:
                child.route(jsonrpc.error(request_id, protocol.UPSTREAM_ERROR,
                                          f"upstream {self.name!r}: its answer is {e.message.removeprefix('Parse error: ')}"))
            return
        raw = message.raw
        if message.is_request:  # stdio names no call: the gateway picks the client to ask
            self._ask_client(raw, lambda m: _write_quietly(child, m))
            return
        if not child.route(raw) and message.is_notification:
            self._heard(child, raw)

    def _read_stderr(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        try:
            for line in stream:
                self._stderr.append(line.decode("utf-8", errors="replace").rstrip()[:STDERR_LINE_CHARS])
        except (OSError, ValueError):
            pass

    def _note_exit(self, child: Child, error: str) -> None:
        """Count a child's unplanned exit once, whoever notices it first."""
        with child.release_lock:
            if child.exit_noted or self._closed.is_set():
                return
            child.exit_noted = True
        self._record_crash(error, child)

    def _record_crash(self, error: str, child: Child | None = None) -> None:
        child = child or self._child
        lived = time.monotonic() - child.started if child is not None else 0.0
        self._crashes = self._crashes + 1 if lived < STABLE_AFTER else 1
        self.restarts += 1
        self.last_error = error
        metrics.child_crashed(self.name)
        # The first restarts are immediate; from the third quick crash on, wait 0.5 s, 1 s, 2 s...
        backoff = 0.0 if self._crashes <= 2 else min(0.5 * 2 ** (self._crashes - 3), MAX_BACKOFF)
        self._restart_at = time.monotonic() + backoff
        logger.warning("upstream %s: %s", self.name, error)

    def _watch_idle(self) -> None:
        while not self._closed.wait(min(self._idle_timeout / 4, 30.0)):
            child = self._child
            if child is None or time.monotonic() - child.last_used < self._idle_timeout:
                continue
            with self._init_lock:
                if self._child is child:
                    self._child = None
            logger.info("upstream %s: stopping the idle child", self.name)
            self._stop(child)

    def _stop(self, child: Child) -> None:
        """Stop the child (see Child.stop), forget its record, give its place back."""
        child.stop()
        if self._records is not None:
            self._records.remove(child.process.pid)
        with child.release_lock:
            release, child.released = not child.released, True
        if release:
            metrics.child_stopped(self.name)
            if self._children is not None:
                self._children.release()


def _write_quietly(child: Child, message: dict[str, Any]) -> None:
    """Best effort (a cancellation, an answer): the child may be gone."""
    try:
        child.write(message)
    except OSError:
        pass
