"""The round-robin test proxy (tests/proxy.py) against two tiny loopback servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from .proxy import RoundRobinProxy
from .upstreams import free_port


class EchoServer:
    """Greets each connection with its name, echoes what it reads, says "bye" at the client's
    EOF and closes. Threads, stopped by close()."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.address = ("127.0.0.1", self.listener.getsockname()[1])
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    def accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            conn.sendall(self.name + b"\n")
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b"bye\n")

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)
        self.listener.close()


@pytest.fixture
def backends() -> Iterator[list[EchoServer]]:
    servers = [EchoServer("zero"), EchoServer("one")]
    yield servers
    for server in servers:
        server.close()


def connect(proxy: RoundRobinProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


def read_line(sock: socket.socket) -> bytes:
    """One line, without its newline (byte by byte: nothing after it is consumed)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"EOF after {line!r}"
        line += chunk
    return line[:-1]


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def proxy_threads(proxy: RoundRobinProxy) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"proxy-{proxy.port}-")]


def test_alternate_connections_reach_alternate_backends(backends: list[EchoServer]) -> None:
    """Connection n goes to backend n mod 2, whatever the previous connections did; counts()
    and each connection's record say so."""
    with RoundRobinProxy([b.address for b in backends]) as proxy:
        greetings = []
        for _ in range(5):
            with connect(proxy) as sock:
                greetings.append(read_line(sock))
        assert greetings == [b"zero", b"one", b"zero", b"one", b"zero"]
        assert proxy.counts() == [3, 2]
        assert [c.backend for c in proxy.connections] == [0, 1, 0, 1, 0]
        assert proxy.errors() == []


def test_both_directions_stream_and_half_close_passes_through(backends: list[EchoServer]) -> None:
    """Bytes flow each way as they are written (an echo comes back before the next chunk is
    sent), a megabyte crosses intact, and the client's EOF reaches the backend, whose last
    words still reach the client."""
    with RoundRobinProxy([b.address for b in backends]) as proxy, connect(proxy) as sock:
        assert read_line(sock) == b"zero"  # backend -> client before the client spoke
        for index in range(5):
            chunk = f"chunk {index}\n".encode()
            sock.sendall(chunk)
            assert read_exactly(sock, len(chunk)) == chunk
        big = bytes(range(256)) * 4096
        sender = threading.Thread(target=sock.sendall, args=(big,))
        sender.start()
        assert read_exactly(sock, len(big)) == big
        sender.join(10)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"bye\n"
        assert proxy.connections[0].head.startswith(b"chunk 0\n")
        assert len(proxy.connections[0].head) == proxy.head_bytes


def test_a_refusing_backend_is_reported_and_not_skipped(backends: list[EchoServer]) -> None:
    """A backend that refuses: its turn's client connection is closed at once and recorded
    with the error; the turn is not given to the other backend, and the next turn works."""
    dead = ("127.0.0.1", free_port())  # nothing listens there
    with RoundRobinProxy([backends[0].address, dead]) as proxy:
        with connect(proxy) as sock:
            assert read_line(sock) == b"zero"
        with connect(proxy) as sock:
            try:
                assert read_to_eof(sock) == b""
            except ConnectionResetError:
                pass
        with connect(proxy) as sock:
            assert read_line(sock) == b"zero"
        assert proxy.counts() == [2, 0]
        [refused] = proxy.errors()
        assert refused.number == 1 and refused.backend == 1
        assert refused.error is not None and "unreachable" in refused.error and "Refused" in refused.error


def test_too_many_connections_are_closed_and_recorded(backends: list[EchoServer]) -> None:
    """Beyond max_connections at once, a new connection is closed and recorded, not queued."""
    with RoundRobinProxy([b.address for b in backends], max_connections=1) as proxy:
        with connect(proxy) as first:
            assert read_line(first) == b"zero"
            with connect(proxy) as second:
                try:
                    assert read_to_eof(second) == b""
                except ConnectionResetError:
                    pass
        [busy] = proxy.errors()
        assert busy.number == 1 and busy.error is not None and "at once" in busy.error


def test_close_stops_every_thread_and_open_connection(backends: list[EchoServer]) -> None:
    """close() ends open pipes (their clients see EOF), joins every thread it started and stops
    listening."""
    proxy = RoundRobinProxy([b.address for b in backends])
    socks = [connect(proxy) for _ in range(3)]
    for sock in socks:
        assert read_line(sock) in (b"zero", b"one")
    assert len(proxy_threads(proxy)) == 4  # the acceptor and one per connection
    proxy.close()
    assert proxy_threads(proxy) == []
    for sock in socks:
        with sock:
            try:
                assert b"bye" not in read_to_eof(sock)
            except ConnectionResetError:
                pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
