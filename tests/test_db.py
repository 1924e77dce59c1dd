"""The database boundary: DatabaseUnavailable, one log line per outage, the pool's dead-connection
reset, the stale caches that serve while PostgreSQL is away."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask import Flask

from metamcp import crypto, repository
from metamcp.app import create_app
from metamcp.authn import Authenticator
from metamcp.config import Settings
from metamcp.db import Availability, Database, is_connection_failure
from metamcp.errors import DatabaseUnavailable

#: Nothing listens on port 1 of 127.0.0.1: a PostgreSQL that is away.
DEAD_URL = "postgresql://metamcp@127.0.0.1:1/metamcp"


def test_connection_failures_are_told_from_bad_statements(db: Database) -> None:
    assert is_connection_failure(psycopg2.OperationalError("server closed the connection unexpectedly"))
    assert is_connection_failure(psycopg2.InterfaceError("connection already closed"))
    assert not is_connection_failure(psycopg2.ProgrammingError("syntax error"))
    # A statement timeout is an OperationalError (57014) on a live connection: not an outage.
    with pytest.raises(psycopg2.errors.QueryCanceled):
        with db.transaction() as cur:
            cur.execute("SET LOCAL statement_timeout = 10")
            cur.execute("SELECT pg_sleep(1)")
    assert not db.availability.is_down
    with db.transaction() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone()["one"] == 1


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    downs: list[int] = []
    availability = Availability(on_down=lambda: downs.append(1))
    with caplog.at_level(logging.WARNING, logger="metamcp.db"):
        for _ in range(50):
            availability.failed(psycopg2.OperationalError("connection refused"))
        assert availability.is_down
        availability.succeeded()
        availability.succeeded()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "database unreachable (connection refused)" in messages[0]
    assert "reachable again" in messages[1]
    assert downs == [1]  # the pool is reset once per outage


def test_while_down_one_attempt_per_probe_interval() -> None:
    availability = Availability()
    assert availability.may_try()
    availability.failed(psycopg2.OperationalError("refused"))
    assert not availability.may_try()  # fail fast, do not wait on a dead server
    availability._next_probe = time.monotonic() - 1
    assert availability.may_try()
    assert not availability.may_try()


def test_unreachable_database_raises_unavailable_fast(caplog: pytest.LogCaptureFixture) -> None:
    db = Database(DEAD_URL, 2)
    with caplog.at_level(logging.WARNING, logger="metamcp.db"):
        for _ in range(20):
            with pytest.raises(DatabaseUnavailable) as raised:
                with db.transaction() as cur:
                    cur.execute("SELECT 1")
            assert raised.value.status == 503 and raised.value.headers["Retry-After"]
    assert len(caplog.records) == 1
    assert db.availability.is_down and not db.ping()
    db.close()


def test_a_dead_pooled_connection_costs_no_failed_request(db: Database, database_url: str) -> None:
    """After a server restart every pooled connection is dead; none may fail a request."""
    pids = set()
    held = [db._pool.get(1) for _ in range(3)]
    for conn in held:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pids.add(cur.fetchone()[0])
        conn.rollback()
        db._pool.put(conn, close=False)
    with psycopg2.connect(database_url) as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),))
    time.sleep(0.2)  # the terminated backends' goodbye reaches the sockets
    with db.transaction() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        assert cur.fetchone()["pid"] not in pids
    assert not db.availability.is_down
    assert db._pool._idle == [] or all(not c.closed for c in db._pool._idle)


class _AwayDatabase:
    """A database that has just become unreachable (pure-logic tests of the caches)."""

    def __init__(self, real: Database) -> None:
        self.real = real
        self.away = False

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.away:
            raise DatabaseUnavailable()
        with self.real.transaction() as cur:
            yield cur


def test_an_expired_key_serves_while_the_database_is_away(db: Database) -> None:
    new = crypto.generate_api_key()
    with db.transaction() as cur:
        repository.insert_key(cur, "k", new.hash, new.prefix)
    away = _AwayDatabase(db)
    auth = Authenticator(away, "s" * 40, 900, ttl=60)  # type: ignore[arg-type]
    principal = auth.authenticate(new.plain)
    jwt = crypto.issue_jwt(principal.key_id, "s" * 40, 900, role=principal.role)
    auth.authenticate(jwt)
    auth.expire()  # past its TTL (or the listener came back)
    away.away = True
    assert auth.authenticate(new.plain) == principal  # stale, but the database is away
    assert auth.authenticate(jwt) == principal
    auth.invalidate()  # a change notification revokes: nothing stale may serve
    with pytest.raises(DatabaseUnavailable):
        auth.authenticate(new.plain)


def test_a_resync_keeps_caches_that_cannot_be_refilled(app: Flask, db: Database) -> None:
    services = app.extensions["metamcp"]
    away = _AwayDatabase(db)
    session = services.sessions.create(None, "2025-11-25", {})
    for component in (services.sessions, services.servers, services.namespaces, services.endpoints):
        component._db = away
    assert services.gateway.pool.servers() == {}
    away.away = True
    for component, topic in ((services.sessions, "sessions"), (services.namespaces, "namespaces"),
                             (services.endpoints, "namespaces"), (services.gateway.catalog, "servers")):
        handler = component.on_registry_change if topic == "servers" else component.on_change
        handler({"topic": topic, "resync": True})
    assert services.sessions.get(session.id) == session
    assert services.gateway.pool.servers() == {}
    away.away = False
    assert services.sessions.get(session.id) == session  # checked again, still there


def test_rest_and_mcp_answer_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    app = create_app(replace(settings, database_url=DEAD_URL), listen=False)  # workers start while it is away
    try:
        client = app.test_client()
        key = {"X-API-Key": crypto.generate_api_key().plain}
        rest = client.get("/api/v1/mcp/servers", headers=key)
        assert rest.status_code == 503 and rest.headers["Retry-After"] == "2"
        assert rest.get_json()["error"] == "unavailable"
        mcp = client.post("/mcp", headers={**key, "Accept": "application/json, text/event-stream"},
                          json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                "params": {"protocolVersion": "2025-11-25"}})
        assert mcp.status_code == 503 and mcp.headers["Retry-After"] == "2"
        body = mcp.get_json()
        assert body["jsonrpc"] == "2.0" and "error" in body and "unavailable" in body["error"]["message"]
        assert client.get("/ready").status_code == 503  # /health (liveness) stays 200
        assert client.get("/health").status_code == 200
    finally:
        app.extensions["metamcp"].close()


def test_embedded_urls_survive_unusual_data_directories(tmp_path: Path) -> None:
    """Regression: a data directory with `+` (bench's `on+log`) or a space reached yoyo as
    another path (its URL parser reads `+` as a space), so migrations could not connect."""
    from yoyo.connections import parse_uri

    from metamcp.embedded import EmbeddedPostgres

    for name in ("on+log", "a b", "x%2By"):
        server = EmbeddedPostgres(tmp_path / name / "postgres")
        server._socket_dir = tmp_path / name / "postgres"
        url = server._url("metamcp")
        assert psycopg2.extensions.parse_dsn(url)["host"] == str(server._socket_dir)
        assert parse_uri(url).args["host"] == str(server._socket_dir)
