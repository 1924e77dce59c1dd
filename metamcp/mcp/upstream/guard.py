"""Upstream HTTP connections that only reach addresses the address policy allows.

The check runs after DNS resolution, inside the connection: the host is resolved once, every
address it gave is checked, and the socket connects to an allowed address itself, so nothing
resolves the name again between the check and the connect (DNS rebinding gains nothing).
TLS is untouched: urllib3 still wraps the socket with the URL's host name for SNI and
certificate verification. A refusal surfaces as urllib3's NewConnectionError whose cause is
the AddressRefused, for HttpUpstream._failure to translate.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from metamcp.addresses import AddressPolicy, AddressRefused, parse_ip

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
Resolver = Callable[[str, int], Sequence[AddrInfo]]


def system_resolver(host: str, port: int) -> Sequence[AddrInfo]:
    """getaddrinfo as urllib3 calls it (IPv6 answers only where the host can use them)."""
    return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)


def allowed_infos(policy: AddressPolicy, host: str, port: int, resolve: Resolver) -> list[AddrInfo]:
    """What `host` resolves to that the policy allows, in the resolver's order; AddressRefused
    when nothing is (an answer mixing refused and allowed addresses keeps the allowed ones)."""
    infos = resolve(host, port)
    addresses = [parse_ip(str(info[4][0])) for info in infos]
    usable = [(info, address) for info, address in zip(infos, addresses, strict=True) if address is not None]
    chosen = policy.choose(host.rstrip("."), [address for _, address in usable])
    return [usable[index][0] for index in chosen]


def connect(policy: AddressPolicy, address: tuple[str, int], timeout: Any,
            source_address: tuple[str, int] | None, socket_options: Any,
            resolve: Resolver = system_resolver) -> socket.socket:
    """urllib3's create_connection, but only to allowed addresses, each by its numeric sockaddr."""
    host, port = address
    host = host.strip("[]")
    try:
        host.encode("idna")
    except UnicodeError:
        raise LocationParseError(f"'{host}', label empty or too long") from None
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in allowed_infos(policy, host, port, resolve):
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            error = e
            if sock is not None:
                sock.close()
    raise error or OSError("getaddrinfo returned no address")


_watchers = threading.local()


@contextmanager
def watching(on_connection: Callable[[HTTPConnection], None]) -> Iterator[None]:
    """While the block runs, tell `on_connection` the connection each request of this thread
    goes out on, before it is sent: the caller can then shut it down while the request still
    waits for its response headers (a stateless upstream sends none until it has something)."""
    _watchers.current = on_connection
    try:
        yield
    finally:
        _watchers.current = None


class GuardedHTTPConnection(HTTPConnection):
    """An HTTP connection whose socket comes from `connect` above (urllib3's _new_conn, guarded)."""

    def __init__(self, *args: Any, policy: AddressPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(*args, **kwargs)

    def request(self, *args: Any, **kwargs: Any) -> None:
        watcher = getattr(_watchers, "current", None)
        if watcher is not None:
            watcher(self)
        super().request(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        try:
            sock = connect(self._policy, (self._dns_host, self.port), self.timeout,
                           self.source_address, self.socket_options)
        except AddressRefused as e:
            raise NewConnectionError(self, f"Refused by the address policy: {e}") from e
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e
        except TimeoutError as e:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from e
        except OSError as e:
            raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


class GuardedHTTPSConnection(GuardedHTTPConnection, HTTPSConnection):
    """HTTPS on a guarded socket; the handshake still uses the URL's host name (SNI, certificate)."""


class _GuardedPoolManager(PoolManager):
    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(**kwargs)

    def _new_pool(self, scheme: str, host: str, port: int,
                  request_context: dict[str, Any] | None = None) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = GuardedHTTPSConnection if scheme == "https" else GuardedHTTPConnection
        pool.conn_kw["policy"] = self._policy
        return pool


class GuardedAdapter(HTTPAdapter):
    """requests' HTTPAdapter whose connections obey an AddressPolicy (proxies are not used)."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK,
                         **pool_kwargs: Any) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _GuardedPoolManager(self._policy, num_pools=connections, maxsize=maxsize,
                                               block=block, **pool_kwargs)
