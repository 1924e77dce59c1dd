"""Upstream connections under the address policy: real sockets and servers on 127.0.0.1."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from metamcp.addresses import AddressPolicy, AddressRefused
from metamcp.mcp.upstream.call import UpstreamError, UpstreamTimeout
from metamcp.mcp.upstream.factory import create_upstream
from metamcp.mcp.upstream.guard import AddrInfo, GuardedAdapter, connect

from .upstreams import Log, UpstreamProcess, free_port

DENY_LOOPBACK = AddressPolicy(deny=frozenset({"loopback"}))


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def count(self, expected: int, seconds: float = 5.0) -> int:
        """Connections accepted so far, waiting (bounded) until there are `expected`."""
        deadline = time.monotonic() + seconds
        while self.accepted < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    opened = Listener()
    yield opened
    opened.close()


def rebinding(*addresses: str) -> Any:
    """A resolver that answers every name with `addresses` (what a rebinding DNS server does)."""

    def resolve(host: str, port: int) -> list[AddrInfo]:
        infos: list[AddrInfo] = []
        for text in addresses:
            if ipaddress.ip_address(text).version == 4:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, port)))
            else:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, port, 0, 0)))
        return infos

    return resolve


def test_a_rebound_name_connects_only_to_an_allowed_address(listener: Listener) -> None:
    resolve = rebinding("169.254.169.254", "127.0.0.1")
    sock = connect(AddressPolicy(), ("rebind.test", listener.port), 2.0, None, None, resolve=resolve)
    try:
        assert sock.getpeername() == ("127.0.0.1", listener.port)  # never tried the metadata address
    finally:
        sock.close()
    with pytest.raises(AddressRefused) as refused:
        connect(AddressPolicy(), ("rebind.test", listener.port), 2.0, None, None,
                resolve=rebinding("169.254.169.254", "::ffff:169.254.169.254"))
    assert str(refused.value) == "rebind.test (169.254.169.254) is a link-local/cloud-metadata address (always refused)"
    with pytest.raises(AddressRefused, match=r"rebind\.test \(127\.0\.0\.1\) is loopback"):
        connect(DENY_LOOPBACK, ("rebind.test", listener.port), 2.0, None, None, resolve=rebinding("127.0.0.1"))
    assert listener.count(1) == 1 and listener.count(2, seconds=0.3) == 1


def test_the_adapter_refuses_before_connecting(listener: Listener) -> None:
    url = f"http://127.0.0.1:{listener.port}/"
    with requests.Session() as http:
        http.trust_env = False
        http.mount("http://", GuardedAdapter(DENY_LOOPBACK, max_retries=0))
        with pytest.raises(requests.ConnectionError) as failure:
            http.get(url, timeout=2)
    assert "127.0.0.1 is loopback (refused by METAMCP_UPSTREAM_DENY)" in str(failure.value)
    assert listener.accepted == 0
    with requests.Session() as http:
        http.mount("http://", GuardedAdapter(AddressPolicy(), max_retries=0))
        with pytest.raises(requests.ConnectionError):
            http.get(url, timeout=2)  # allowed: it connects (and the listener hangs up)
    assert listener.count(1) == 1


def test_an_upstream_refused_at_connect_time_never_hears_a_request(tmp_path: Path) -> None:
    log = Log(tmp_path / "alpha.log")
    process = UpstreamProcess("alpha", log_file=log.path).start()
    try:
        denied = create_upstream(process.config(), connect_timeout=2.0, read_timeout=5.0, policy=DENY_LOOPBACK)
        with pytest.raises(UpstreamError) as failure:
            denied.list_all("tools/list", "tools")
        denied.close()
        assert not isinstance(failure.value, UpstreamTimeout)
        assert failure.value.message == ("upstream 'alpha': 127.0.0.1 is loopback (refused by "
                                         "METAMCP_UPSTREAM_DENY) while initializing")
        assert log.lines() == []
        allowed = create_upstream(process.config(), connect_timeout=2.0, read_timeout=5.0)
        assert allowed.list_all("tools/list", "tools")  # the same upstream, reachable
        allowed.close()
        assert "received tools/list" in log.lines()
    finally:
        process.stop()


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name `localhost` only (not for 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_keeps_sni_and_certificate_checks_on_the_host_name(tmp_path: Path) -> None:
    cert_file, key_file = _certificate(tmp_path)
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: Any) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hello)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        with requests.Session() as http_session:
            http_session.trust_env = False
            http_session.mount("https://", GuardedAdapter(AddressPolicy(), max_retries=0))
            reply = http_session.get(f"https://localhost:{port}/", verify=str(cert_file), timeout=5)
            assert reply.status_code == 200 and reply.text == "ok"
            assert names[-1] == "localhost"  # SNI carries the name, though the socket used the IP
            with pytest.raises(requests.exceptions.SSLError, match="127.0.0.1"):
                # the certificate is for localhost only: hostname verification is still on
                http_session.get(f"https://127.0.0.1:{port}/", verify=str(cert_file), timeout=5)
            denied = requests.Session()
            denied.mount("https://", GuardedAdapter(DENY_LOOPBACK, max_retries=0))
            with pytest.raises(requests.ConnectionError, match=r"localhost \(127\.0\.0\.1\) is loopback"):
                denied.get(f"https://localhost:{port}/", verify=str(cert_file), timeout=5)
            denied.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
