"""Shared fixtures: a real PostgreSQL (embedded, or DATABASE_URL when set), apps, keys."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from metamcp import crypto, repository
from metamcp.app import create_app
from metamcp.config import Settings
from metamcp.db import Database, EmbeddedPostgres, migrate
from metamcp.notify import Topic

ROOT = Path(__file__).resolve().parent.parent
TEST_ENCRYPTION_KEY = bytes(range(32))
TEST_JWT_SECRET = "test-jwt-secret-" + "x" * 32
#: How long a cleanup stop (Gunicorn.stop() without a signal) waits before it kills the workers;
#: a gateway with nothing in flight ends in about a second.
CLEANUP_GRACE = 5.0


@contextmanager
def scratch_database(server_url: str, prefix: str, migrated: bool = True) -> Iterator[str]:
    """A database of its own on the server of `server_url` (migrated unless told otherwise),
    dropped afterwards whatever the test did to it."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))
        if migrated:
            migrate(url)
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    external = os.environ.get("DATABASE_URL")
    if external:
        with scratch_database(external, "metamcp_test") as url:
            yield url
        return
    # Short path: the server's Unix socket lives in its data directory.
    root = Path(tempfile.mkdtemp(prefix="mmt", dir="/tmp"))
    embedded = EmbeddedPostgres(root / "pg")
    url = embedded.start()
    migrate(url)
    yield url
    embedded.stop()
    shutil.rmtree(root, ignore_errors=True)


#: Empties what a deployment fills (keys, servers, sessions, namespaces, endpoints, and what hangs on them).
RESET = "TRUNCATE api_keys, mcp_servers, mcp_sessions, namespaces, endpoints, audit_log RESTART IDENTITY CASCADE"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, 4)
    with database.transaction() as cur:
        cur.execute(RESET)
    yield database
    database.close()


def fresh_keys(database_url: str, **roles: str) -> dict[str, str]:
    """Empty the database's tables (RESET) and make one API key per `name=role`; returns each
    key's plaintext by name. For module fixtures that start a live gateway."""
    database = Database(database_url, 1)
    keys: dict[str, str] = {}
    try:
        with database.transaction() as cur:
            cur.execute(RESET)
            for name, role in roles.items():
                new = crypto.generate_api_key()
                repository.insert_key(cur, name, new.hash, new.prefix, role)
                keys[name] = new.plain
    finally:
        database.close()
    return keys


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        jwt_secret=TEST_JWT_SECRET,
        encryption_key=TEST_ENCRYPTION_KEY,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
def app(settings: Settings, db: Database) -> Iterator[Flask]:
    application = create_app(settings, listen=False)
    yield application
    application.extensions["metamcp"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_key(db: Database) -> Callable[..., tuple[int, str]]:
    """Create an API key directly in the database; returns (id, plain key)."""

    def make(name: str = "test") -> tuple[int, str]:
        new = crypto.generate_api_key()
        with db.transaction() as cur:
            row = repository.insert_key(cur, name, new.hash, new.prefix)
            repository.notify_change(cur, Topic.KEYS)
        return row["id"], new.plain

    return make


@pytest.fixture
def api_key(make_key: Callable[..., tuple[int, str]]) -> str:
    return make_key()[1]


class TransactionCounter:
    """Counts the transactions a Database opens (wraps the real method; queries still run)."""

    def __init__(self, database: Database) -> None:
        self.count = 0
        real = database.transaction

        def counting():  # type: ignore[no-untyped-def]
            self.count += 1
            return real()

        database.transaction = counting  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a subprocess: ours, minus settings, plus the overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAMCP_", "DATABASE_URL"))}
    env.pop("JWT_SECRET", None)
    env.pop("ENCRYPTION_KEY", None)
    for key, value in overrides.items():
        if value is not None:
            env[key] = value
    return env


class Gunicorn:
    """A live gunicorn started the way `make run` starts it; stopped by PID."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:metamcp.gunicorn_conf"],
            cwd=ROOT,
            env={**env, "METAMCP_PORT": str(port)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited {self.proc.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int | None = None) -> int:
        """Stop by `sig` and wait up to 30 s (a test that checks how gunicorn stops names the
        signal). Without one, a cleanup: SIGTERM, Ctrl-C after 2 s (a call or kept-alive
        connection still holding a worker), and the workers still running after CLEANUP_GRACE
        are killed. Not Ctrl-C first: the master passes it on as SIGQUIT, and a gthread worker
        deadlocks when that lands while its main thread starts a pool thread (the handler's
        tpool.shutdown takes the lock ThreadPoolExecutor.submit holds) until the master kills it
        after its graceful timeout."""
        if sig is not None:
            self._signal_and_wait(sig, 30)
        elif not self._signal_and_wait(signal.SIGTERM, 2.0) and not self._signal_and_wait(
                signal.SIGINT, CLEANUP_GRACE - 2.0):
            for pid in self.workers():
                os.kill(pid, signal.SIGKILL)
            self._signal_and_wait(None, 10)  # the master exits once its workers are gone
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def _signal_and_wait(self, sig: int | None, timeout: float) -> bool:
        """Send `sig` (unless None or the master is gone); True once the master has exited."""
        if self.proc.poll() is None and sig is not None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def workers(self) -> list[int]:
        """The PIDs of the master's workers: its children running its own executable (not an
        embedded PostgreSQL)."""
        try:
            exe = os.readlink(f"/proc/{self.proc.pid}/exe")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid and os.readlink(f"/proc/{entry}/exe") == exe:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return found


@pytest.fixture
def start_gunicorn() -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(env: dict[str, str], port: int | None = None, ready: bool = True) -> Gunicorn:
        server = Gunicorn(env, port or free_port())
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
        os.unlink(server.log.name)


def run_keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "keys.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
