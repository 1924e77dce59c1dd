"""The audit writer (metamcp.audit) against a real PostgreSQL: batches written off the request
path, a full queue dropping and counting instead of waiting, a database outage logged once and
survived, the retention purge, and what the sink costs per record."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import psycopg2
import pytest

from metamcp import audit, audit_repository
from metamcp.audit import AuditLog
from metamcp.config import ConfigError, load_settings
from metamcp.db import Database
from metamcp.observe import Observation

from .conftest import scratch_database


def observation(n: int = 1, method: str = "tools/call") -> Observation:
    obs = Observation(f"req-{n}", "POST", "/mcp", "/mcp", "127.0.0.1", key_id=7, key_name="bot",
                      session="s1", endpoint=None, status=200, bytes_out=123, duration=0.0125)
    for i in range(n):
        op = obs.operation(method, f"srv__tool{i}")
        op.routed("srv", f"tool{i}")
        op.upstream_seconds = 0.01
    obs.operation("tools/list")  # not audited
    return obs


def count(db: Database, where: str = "TRUE") -> int:
    with db.transaction() as cur:
        cur.execute(f"SELECT count(*) AS n FROM audit_log WHERE {where}")  # noqa: S608
        return int(cur.fetchone()["n"])


def wait_for(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def scratch(database_url: str) -> Iterator[tuple[str, Database]]:
    """A database of its own: outages and purges here touch no other test."""
    with scratch_database(database_url, "metamcp_audit") as url:
        database = Database(url, 2)
        yield url, database
        database.close()


def test_settings_switch_and_retention_are_validated() -> None:
    base = {"JWT_SECRET": "x" * 32, "ENCRYPTION_KEY": "00" * 32}
    settings = load_settings(base)
    assert (settings.audit, settings.audit_retention_days) == (True, 30)
    settings = load_settings({**base, "METAMCP_AUDIT": "off", "METAMCP_AUDIT_RETENTION_DAYS": "0"})
    assert (settings.audit, settings.audit_retention_days) == (False, 0)
    for name, bad in (("METAMCP_AUDIT", "maybe"), ("METAMCP_AUDIT_RETENTION_DAYS", "-1"),
                      ("METAMCP_AUDIT_RETENTION_DAYS", "a week")):
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, name: bad})
        assert caught.value.setting == name


def test_records_are_written_in_batches_with_their_fields(scratch: tuple[str, Database]) -> None:
    url, db = scratch
    log = AuditLog(url, flush_seconds=0.05)
    log.start()
    try:
        log.sink(observation(3))  # a batch of three calls: three rows; tools/list is not audited
        refused = Observation("req-r", "POST", "/mcp", "/mcp", "127.0.0.1", key_id=7, key_name="bot",
                              mcp_method="prompts/get", status=429)
        log.sink(refused)  # refused before any operation: one row
        nul = observation(1)
        nul.operations[0].name = "srv__a\0b" + "x" * 5000
        log.sink(nul)  # a NUL and an overlong name are stored, cleaned
        assert wait_for(lambda: log.written == 5), log.written
    finally:
        log.stop()
    with db.transaction() as cur:
        cur.execute("SELECT * FROM audit_log ORDER BY id")
        rows = [dict(r) for r in cur.fetchall()]
    assert [r["target"] for r in rows[:3]] == ["srv__tool0", "srv__tool1", "srv__tool2"]
    first = rows[0]
    assert (first["kind"], first["actor"], first["key_id"], first["key_name"], first["request_id"],
            first["session_id"], first["action"], first["server"], first["upstream_name"], first["outcome"],
            first["http_status"], first["bytes"]) == (
        "call", "key", 7, "bot", "req-3", "s1", "tools/call", "srv", "tool0", "ok", 200, 123)
    assert first["duration_ms"] == pytest.approx(12.5) and first["upstream_ms"] == pytest.approx(10)
    assert first["pid"] > 0 and first["host"]
    assert (rows[3]["action"], rows[3]["outcome"], rows[3]["http_status"], rows[3]["target"]) == (
        "prompts/get", "error", 429, None)
    assert rows[4]["target"].startswith("srv__a\ufffdb") and len(rows[4]["target"]) == audit.MAX_TEXT
    assert log.dropped == 0


def test_a_full_queue_drops_and_counts_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[int] = []
    monkeypatch.setattr(audit, "report_dropped", reported.append)
    log = AuditLog("postgresql://unused", queue_size=4)  # no writer: nothing empties the queue
    record = observation(1)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        log.sink(record)
        times.append(time.perf_counter() - started)
    assert log.dropped == 196 and sum(reported) == 196
    assert max(times) < 0.05, max(times)  # never waits for room


def test_the_sink_costs_microseconds_per_record() -> None:
    """The figure for the report: µs per audited record on the request thread."""
    log = AuditLog("postgresql://unused", queue_size=1_000_000)
    record = observation(1)
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        log.sink(record)
    per_record = (time.perf_counter() - started) / n * 1e6
    print(f"audit sink: {per_record:.2f} µs per record")
    assert log.dropped == 0 and per_record < 50


def test_an_outage_is_logged_once_and_the_records_written_after_it(
        scratch: tuple[str, Database], database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url, db = scratch
    name = psycopg2.extensions.parse_dsn(url)["dbname"]  # also an embedded URL (?host=/path)
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    log = AuditLog(url, flush_seconds=0.05)
    log.start()
    caplog.set_level(logging.INFO, logger="metamcp.audit")
    try:
        log.sink(observation(1))
        assert wait_for(lambda: log.written == 1)
        with admin.cursor() as cur:  # the database goes away: no new connection, the writer's cut
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        for _ in range(15):  # many batches' worth while it is away
            log.sink(observation(2))
            time.sleep(0.08)
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert wait_for(lambda: log.written == 31, timeout=10), log.written
    finally:
        started = time.monotonic()
        log.stop()
        stopped = time.monotonic() - started
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "metamcp.audit"]
    assert sum("unreachable" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages
    assert log.dropped == 0 and count(db) == 31 and stopped < 3


def test_stop_is_bounded_while_the_database_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog("postgresql://nobody@127.0.0.1:1/none", flush_seconds=0.05)
    log.start()
    for n in range(5):
        log.sink(observation(n + 1))
    time.sleep(0.3)
    started = time.monotonic()
    log.stop()
    assert time.monotonic() - started < 3
    assert log.written == 0 and log.dropped == 15  # what could not be written is counted


def test_the_retention_purge_removes_old_rows_only(scratch: tuple[str, Database]) -> None:
    url, db = scratch
    now = time.time()
    rows = [(now - age * 86400, "call", "key", 1, "k", f"r{age}", None, None, "tools/call", "s", "s__t", "t",
             "ok", None, 200, 1.0, 0.5, 10, "h", 1) for age in (0, 1, 29.9, 30.1, 45, 400)]
    with db.transaction() as cur:
        audit_repository.insert_calls(cur, rows)

    def ids() -> list[str]:
        with db.transaction() as cur:
            cur.execute("SELECT request_id FROM audit_log ORDER BY at DESC")
            return [r["request_id"] for r in cur.fetchall()]

    assert AuditLog(url, retention_days=0).purge() == 0  # 0 keeps everything
    holder = psycopg2.connect(url)  # another process purging: this one skips
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (audit_repository.PURGE_LOCK,))
        assert AuditLog(url, retention_days=30).purge() == 0
    holder.rollback()
    holder.close()
    assert len(ids()) == 6
    log = AuditLog(url, retention_days=30, flush_seconds=0.05)
    log.start()  # the writer purges when it starts, then every purge_interval
    try:
        assert wait_for(lambda: len(ids()) == 3)
    finally:
        log.stop()
    assert ids() == ["r0", "r1", "r29.9"]
