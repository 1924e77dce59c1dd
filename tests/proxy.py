"""A round-robin TCP proxy for tests: each accepted connection goes to the next backend in turn,
so a client that opens one connection per request sends its requests to alternating servers.

    with RoundRobinProxy([("127.0.0.1", 8001), ("127.0.0.1", 8002)]) as proxy:
        requests.get(proxy.url + "/health")      # backend 0
        requests.get(proxy.url + "/health")      # backend 1
        proxy.counts()                           # [1, 1]

Listens on 127.0.0.1 (a free port). One thread accepts; one thread per connection pipes both
directions (half-closes passed on), so streams (SSE) flow as they are written. Every
connection is recorded (`connections`): the backend it went to, the first bytes the client
sent (`head`, to tell which request went where) and the error if the backend could not be
reached (the client's connection is then closed: a refused backend is never skipped over, so
alternation stays strict). Bounded: concurrent connections (more are closed at once and
recorded), bytes kept per head, socket timeouts; `close()` stops every thread it started.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

#: How often blocked loops look at the stop flag (seconds).
POLL = 0.05
CHUNK = 64 * 1024


@dataclass
class Connection:
    """One accepted client connection and what became of it."""

    number: int
    backend: int
    #: The first bytes the client sent (at most the proxy's `head_bytes`).
    head: bytearray = field(default_factory=bytearray)
    #: Why the connection was not piped (backend unreachable, too many connections), or None.
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class RoundRobinProxy:
    """Listens on 127.0.0.1:`port`; the n-th connection is piped to backend n mod len(backends)."""

    def __init__(self, backends: Sequence[tuple[str, int]], *, max_connections: int = 256,
                 head_bytes: int = 8192, connect_timeout: float = 5.0, idle_timeout: float = 120.0) -> None:
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self.backends = list(backends)
        self.max_connections = max_connections
        self.head_bytes = head_bytes
        self.connect_timeout = connect_timeout
        #: A direction with nothing to send for this long (and the other idle too) is closed.
        self.idle_timeout = idle_timeout
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}-accept",
                                          daemon=True)
        self._acceptor.start()

    def __enter__(self) -> RoundRobinProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def recorded(self, since: int = 0) -> list[Connection]:
        """The connections accepted so far, from the `since`-th (a copy of the list)."""
        with self._lock:
            return self.connections[since:]

    def counts(self, since: int = 0) -> list[int]:
        """Connections piped to each backend (refused ones not counted), from the `since`-th."""
        piped = [c for c in self.recorded(since) if c.error is None]
        return [sum(1 for c in piped if c.backend == index) for index in range(len(self.backends))]

    def errors(self, since: int = 0) -> list[Connection]:
        return [c for c in self.recorded(since) if c.error is not None]

    def sent_to(self, *needles: bytes, since: int = 0) -> list[int]:
        """The backends, in order, of the connections whose first bytes contain every needle."""
        return [c.backend for c in self.recorded(since) if all(needle in c.head for needle in needles)]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every open connection, and join every thread (bounded)."""
        self._stopping.set()
        self._acceptor.join(timeout)
        with self._lock:
            open_sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its pipe thread
                pass
        for thread in threads:
            thread.join(timeout)
        self._listener.close()
        alive = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        if alive:
            raise RuntimeError(f"proxy threads still running after close(): {alive}")

    def _accept_loop(self) -> None:
        number = 0
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed under us
                return
            record = Connection(number, number % len(self.backends))
            number += 1
            with self._lock:
                self.connections.append(record)
                self._threads = [t for t in self._threads if t.is_alive()]
                busy = len(self._threads) >= self.max_connections
                if not busy:
                    thread = threading.Thread(target=self._serve, args=(client, record), daemon=True,
                                              name=f"proxy-{self.port}-conn-{record.number}")
                    self._threads.append(thread)
                    self._sockets.add(client)
            if busy:
                record.error = f"more than {self.max_connections} connections at once"
                record.done.set()
                client.close()
                continue
            thread.start()

    def _serve(self, client: socket.socket, record: Connection) -> None:
        host, port = self.backends[record.backend]
        backend: socket.socket | None = None
        try:
            try:
                backend = socket.create_connection((host, port), timeout=self.connect_timeout)
            except OSError as e:
                record.error = f"backend {record.backend} ({host}:{port}) unreachable: {e!r}"
                return
            with self._lock:
                self._sockets.add(backend)
            self._pipe(client, backend, record)
        finally:
            with self._lock:
                self._sockets.discard(client)
                if backend is not None:
                    self._sockets.discard(backend)
            client.close()
            if backend is not None:
                backend.close()
            record.done.set()

    def _pipe(self, client: socket.socket, backend: socket.socket, record: Connection) -> None:
        """Copy bytes both ways until both sides have finished sending (or stop, or idle)."""
        peer = {client: backend, backend: client}
        open_reads = {client, backend}
        for sock in peer:
            sock.settimeout(self.idle_timeout)  # bounds a blocked sendall
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            idle = 0.0
            while open_reads and not self._stopping.is_set():
                ready = selector.select(POLL)
                if not ready:
                    idle += POLL
                    if idle >= self.idle_timeout:
                        return
                    continue
                idle = 0.0
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(CHUNK)
                    except OSError:  # reset by the peer
                        return
                    if not data:  # this side finished sending: pass the half-close on
                        selector.unregister(source)
                        open_reads.discard(source)
                        try:
                            peer[source].shutdown(socket.SHUT_WR)
                        except OSError:
                            return
                        continue
                    if source is client and len(record.head) < self.head_bytes:
                        record.head += data[:self.head_bytes - len(record.head)]
                    try:
                        peer[source].sendall(data)
                    except OSError:
                        return
