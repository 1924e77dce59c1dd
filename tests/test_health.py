"""Probes: /health answers from memory, /ready checks the database and its migrations, and the
admin report shows cached upstream states without pinging or starting anything."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from flask.testing import FlaskClient

from metamcp.app import create_app
from metamcp.config import Settings
from metamcp.db import Database
from metamcp.readiness import FRESH_FOR

from .conftest import TransactionCounter, scratch_database

STUBBORN = Path(__file__).resolve().parent / "servers" / "stubborn_server.py"


@pytest.fixture
def hung_url() -> Iterator[str]:
    """An upstream URL whose server accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def spare_database(database_url: str) -> Iterator[str]:
    """A migrated database of its own, dropped afterwards (whatever the test did to it)."""
    with scratch_database(database_url, "metamcp_spare") as url:
        yield url


def marked(marker: str) -> list[int]:
    """Live processes whose command line carries `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in Path(entry, "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def register(client: FlaskClient, key: str, hung_url: str, marker: str) -> None:
    headers = {"X-API-Key": key}
    for server in ({"name": "hung", "transport": "streamable_http", "url": hung_url},
                   {"name": "kid", "transport": "stdio", "command": sys.executable,
                    "args": [str(STUBBORN), marker]}):
        assert client.post("/api/v1/mcp/servers", json=server, headers=headers).status_code == 201


def test_health_answers_from_memory_without_names(client: FlaskClient, db: Database, api_key: str,
                                                  hung_url: str) -> None:
    marker = f"health-{secrets.token_hex(4)}"
    register(client, api_key, hung_url, marker)
    counter = TransactionCounter(db)
    for _ in range(20):
        response = client.get("/health")
        assert response.status_code == 200
        assert set(response.json) == {"status", "version"} and response.json["status"] == "ok"
        assert b"hung" not in response.data and b"kid" not in response.data
    assert counter.count == 0  # not one query
    assert marked(marker) == []  # and no child started


def test_health_lives_while_the_database_is_gone(settings: Settings, spare_database: str,
                                                 database_url: str) -> None:
    app = create_app(replace(settings, database_url=spare_database), listen=False)
    try:
        client = app.test_client()
        assert client.get("/ready").status_code == 200
        drop(database_url, spare_database)
        time.sleep(FRESH_FOR)
        assert client.get("/health").status_code == 200
        started = time.monotonic()
        response = client.get("/ready")
        assert response.status_code == 503
        assert time.monotonic() - started < 10  # bounded (about 2 s), never the pool's wait
        assert response.headers["Retry-After"].isdigit()
        assert response.json["error"] == "unavailable" and "database" in response.json["message"]
    finally:
        app.extensions["metamcp"].close()


def drop(database_url: str, url: str) -> None:
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    finally:
        admin.close()


def test_ready_when_database_and_migrations_are_there(client: FlaskClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200 and response.json["status"] == "ready"


def test_not_ready_while_a_migration_is_missing(settings: Settings, spare_database: str) -> None:
    conn = psycopg2.connect(spare_database)
    with conn, conn.cursor() as cur:  # as if the newest migration had not been applied yet
        cur.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0003_namespaces_endpoints'")
    conn.close()
    app = create_app(replace(settings, database_url=spare_database), listen=False)
    try:
        response = app.test_client().get("/ready")
        assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
        assert set(response.json) == {"error", "message", "details"}
        assert "0003_namespaces_endpoints" in response.json["message"]
    finally:
        app.extensions["metamcp"].close()


def test_admin_report_needs_a_credential(client: FlaskClient, api_key: str) -> None:
    assert client.get("/api/v1/health").status_code == 401
    assert client.get("/api/v1/health", headers={"X-API-Key": "mcp_wrong"}).status_code == 401
    report = client.get("/api/v1/health", headers={"X-API-Key": api_key})
    assert report.status_code == 200
    assert report.json["database"]["reachable"] and report.json["database"]["migrations_applied"]
    assert report.json["worker"]["pid"] == os.getpid()


def test_admin_report_never_pings_or_starts_upstreams(client: FlaskClient, api_key: str, hung_url: str,
                                                      make_key: Callable[..., tuple[int, str]]) -> None:
    marker = f"report-{secrets.token_hex(4)}"
    register(client, api_key, hung_url, marker)
    started = time.monotonic()
    report = client.get("/api/v1/health", headers={"X-API-Key": api_key}).json
    assert time.monotonic() - started < 5  # a ping of the hung upstream would take 10 s
    states = {u["name"]: (u["status"], u.get("process")) for u in report["upstreams"]}
    assert states == {"hung": ("unknown", None), "kid": ("unknown", None)}
    assert marked(marker) == []
    assert report["database"]["pool"]["max"] >= 1
