"""Prometheus metrics (metamcp.metrics) in one process: the sink's labels and values, the
instrumentation points, the multiprocess directory helpers, the settings, and who may read
GET /metrics (Flask test client, real database). The multi-worker view: test_metrics_e2e.py."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from werkzeug.test import TestResponse

from metamcp import metrics, observe
from metamcp.app import create_app
from metamcp.audit import AuditLog
from metamcp.config import ConfigError, Settings, load_settings
from metamcp.db import Database
from metamcp.limits import LimitExceeded, Limits
from metamcp.mcp.capacity import Admission, Saturated, ThreadBudget
from metamcp.mcp.upstream.stdio import StdioUpstream
from metamcp.observe import ERROR, OK, TOOL_ERROR, Observation

from .conftest import ROOT, TEST_ENCRYPTION_KEY, TEST_JWT_SECRET, child_env
from .test_stdio import config as stdio_config
from .test_stdio import echo as stdio_echo
from .test_stdio import make  # noqa: F401 - fixture

TOKEN = "m" * 40


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def observation(route: str = "/mcp", method: str = "POST", status: int = 200,
                duration: float = 0.010, mcp_method: str | None = None) -> Observation:
    obs = Observation("rid", method, route, route, "127.0.0.1")
    obs.status, obs.duration, obs.mcp_method = status, duration, mcp_method
    return obs


@pytest.fixture(autouse=True)
def enabled() -> metrics.Instruments:
    return metrics.enable()


def test_gateway_seconds_is_the_difference_floored_at_zero() -> None:
    assert metrics.gateway_seconds(0.25, 0.2) == pytest.approx(0.05)
    assert metrics.gateway_seconds(0.2, 0.2) == 0.0
    assert metrics.gateway_seconds(0.2, 0.2000001) == 0.0


def test_a_routed_tool_call_is_split_into_upstream_and_gateway_time() -> None:
    labels = {"server": "unit_srv", "tool": "echo"}
    before = {n: value(n + "_sum", **labels) for n in ("metamcp_tool_call_upstream_seconds",
                                                       "metamcp_tool_call_gateway_seconds",
                                                       "metamcp_tool_call_seconds")}
    calls = value("metamcp_tool_calls_total", outcome=TOOL_ERROR, **labels)
    fine = value("metamcp_tool_call_gateway_seconds_bucket", le="0.00025", **labels)
    coarse = value("metamcp_tool_call_gateway_seconds_bucket", le="0.0005", **labels)
    obs = observation(duration=0.300, mcp_method="tools/call")
    op = obs.operation("tools/call", "unit_srv__echo")
    op.routed("unit_srv", "echo")
    op.upstream_seconds, op.outcome = 0.2996, TOOL_ERROR
    metrics.record(obs)
    assert value("metamcp_tool_call_upstream_seconds_sum", **labels) - before["metamcp_tool_call_upstream_seconds"] == pytest.approx(0.2996)
    assert value("metamcp_tool_call_gateway_seconds_sum", **labels) - before["metamcp_tool_call_gateway_seconds"] == pytest.approx(0.0004)
    assert value("metamcp_tool_call_seconds_sum", **labels) - before["metamcp_tool_call_seconds"] == pytest.approx(0.3)
    # 0.4 ms lands in the 0.5 ms bucket, not in the 0.25 ms one: sub-millisecond resolution.
    assert value("metamcp_tool_call_gateway_seconds_bucket", le="0.0005", **labels) == coarse + 1
    assert value("metamcp_tool_call_gateway_seconds_bucket", le="0.00025", **labels) == fine
    assert value("metamcp_tool_calls_total", outcome=TOOL_ERROR, **labels) == calls + 1
    assert value("metamcp_mcp_requests_total", method="tools/call", outcome=TOOL_ERROR) >= 1


def test_an_unrouted_call_never_becomes_a_label_and_unknown_methods_are_other() -> None:
    obs = observation(mcp_method="tools/call")
    obs.operation("tools/call", "no_such_tool_xyz").outcome = ERROR  # the router refused it: never routed
    errors = value("metamcp_mcp_requests_total", method="tools/call", outcome=ERROR)
    metrics.record(obs)
    assert value("metamcp_mcp_requests_total", method="tools/call", outcome=ERROR) == errors + 1
    others = value("metamcp_mcp_requests_total", method="other", outcome=ERROR)
    obs = observation(mcp_method="made/up")
    obs.operation("made/up").outcome = ERROR
    metrics.record(obs)
    assert value("metamcp_mcp_requests_total", method="other", outcome=ERROR) == others + 1
    exposed = metrics.exposition()[0].decode()
    assert "no_such_tool_xyz" not in exposed and "made/up" not in exposed


def test_requests_without_an_operation_count_by_their_method_and_status() -> None:
    ok = value("metamcp_mcp_requests_total", method="initialize", outcome=OK)
    refused = value("metamcp_mcp_requests_total", method="tools/call", outcome=ERROR)
    metrics.record(observation(mcp_method="initialize"))
    metrics.record(observation(status=429, mcp_method="tools/call"))
    metrics.record(observation(status=401))  # refused before its body was read: no MCP method
    assert value("metamcp_mcp_requests_total", method="initialize", outcome=OK) == ok + 1
    assert value("metamcp_mcp_requests_total", method="tools/call", outcome=ERROR) == refused + 1


def test_http_requests_by_route_method_status_and_standing_streams_left_out_of_durations() -> None:
    route = "/metamcp/<endpoint>/mcp"
    count = value("metamcp_http_requests_total", route=route, method="GET", status="200")
    timed = value("metamcp_http_request_duration_seconds_count", route=route, method="GET")
    metrics.record(observation(route, "GET", duration=3600))  # a stream open for an hour
    assert value("metamcp_http_requests_total", route=route, method="GET", status="200") == count + 1
    assert value("metamcp_http_request_duration_seconds_count", route=route, method="GET") == timed
    metrics.record(observation(route, "GET", status=405, duration=0.001))  # refused at once: timed
    assert value("metamcp_http_request_duration_seconds_count", route=route, method="GET") == timed + 1
    listen = value("metamcp_http_request_duration_seconds_count", route="/mcp", method="POST")
    metrics.record(observation(mcp_method="subscriptions/listen", duration=600))
    assert value("metamcp_http_request_duration_seconds_count", route="/mcp", method="POST") == listen
    others = value("metamcp_http_requests_total", route="unmatched", method="other", status="405")
    metrics.record(observation("unmatched", "BREW", status=405))
    assert value("metamcp_http_requests_total", route="unmatched", method="other", status="405") == others + 1


def test_limits_and_admission_count_rejections_and_calls_in_flight() -> None:
    limits = Limits(rate_limit=1, max_inflight=1, auth_failure_limit=1)
    rate = value("metamcp_limit_rejections_total", kind="rate")
    limits.check_rate(987654, 1)
    with pytest.raises(LimitExceeded):
        limits.check_rate(987654, 1)
    assert value("metamcp_limit_rejections_total", kind="rate") == rate + 1

    admission = Admission(limits, ThreadBudget(threads=2, reserved=1))
    in_flight = value("metamcp_tool_calls_in_flight")
    release = admission.call(None)
    assert value("metamcp_tool_calls_in_flight") == in_flight + 1
    busy = value("metamcp_limit_rejections_total", kind="busy")
    with pytest.raises(Saturated):
        admission.call(None)
    assert value("metamcp_limit_rejections_total", kind="busy") == busy + 1
    release()
    release()  # released once
    assert value("metamcp_tool_calls_in_flight") == in_flight


class Broken:
    """A metric whose file cannot be written (a full disk)."""

    def inc(self, amount: float = 1) -> None:
        raise OSError(28, "No space left on device")

    dec = inc


def test_a_metric_that_cannot_be_written_never_fails_the_caller(
        enabled: metrics.Instruments, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(enabled, "in_flight", Broken())
    monkeypatch.setattr(metrics, "_failed", False)
    budget = ThreadBudget(threads=2, reserved=1)
    release = Admission(Limits(0, 0, 0), budget).call(None)
    assert budget.held == 1
    release()
    assert budget.held == 0  # released in full although the gauge could not be written
    assert len([r for r in caplog.records if "recording a metric failed" in r.getMessage()]) == 1


def test_database_transactions_are_timed_and_connections_in_use_counted(database_url: str) -> None:
    database = Database(database_url, 2)
    try:
        count = value("metamcp_db_transaction_seconds_count")
        in_use = value("metamcp_db_connections_in_use")
        with database.transaction() as cur:
            assert value("metamcp_db_connections_in_use") == in_use + 1
            cur.execute("SELECT pg_sleep(0.01)")
        assert value("metamcp_db_connections_in_use") == in_use
        assert value("metamcp_db_transaction_seconds_count") == count + 1
        assert value("metamcp_db_transaction_seconds_bucket", le="0.005") < value("metamcp_db_transaction_seconds_bucket", le="0.025")
    finally:
        database.close()


def test_stdio_children_running_and_restarts(make: Callable[..., StdioUpstream]) -> None:  # noqa: F811
    running = value("metamcp_stdio_children", server="kid")
    restarts = value("metamcp_stdio_restarts_total", server="kid")
    upstream = make(stdio_config())
    assert stdio_echo(upstream, "one")
    assert value("metamcp_stdio_children", server="kid") == running + 1
    os.kill(upstream.state()["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while upstream.state()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stdio_echo(upstream, "two")
    assert value("metamcp_stdio_restarts_total", server="kid") == restarts + 1
    assert value("metamcp_stdio_children", server="kid") == running + 1  # the dead one left, the new one runs
    upstream.close()
    assert value("metamcp_stdio_children", server="kid") == running


def test_the_audit_queue_overflow_is_counted(app: Flask, database_url: str) -> None:
    """create_app points the audit log's drop report at metamcp_audit_dropped_total."""
    log = AuditLog(database_url, queue_size=1)  # not started: nothing takes from its queue
    obs = observation(mcp_method="tools/call")
    for _ in range(3):
        obs.operation("tools/call", "x__y")
    before = value("metamcp_audit_dropped_total")
    log.sink(obs)
    assert log.dropped == 2
    assert value("metamcp_audit_dropped_total") == before + 2


def test_audit_dropped_counts_what_it_is_told() -> None:
    before = value("metamcp_audit_dropped_total")
    metrics.audit_dropped()
    metrics.audit_dropped(3)
    metrics.audit_dropped(0)
    assert value("metamcp_audit_dropped_total") == before + 4


def test_prepare_directory_empties_the_operators_and_makes_one_otherwise(tmp_path: Path) -> None:
    configured = tmp_path / "prom"
    configured.mkdir()
    (configured / "counter_123.db").write_bytes(b"stale")
    (configured / "keep.txt").write_text("not ours")
    directory, made = metrics.prepare_directory(configured)
    assert (directory, made) == (configured, False)
    assert sorted(p.name for p in configured.iterdir()) == ["keep.txt"]
    directory, made = metrics.prepare_directory(None)
    try:
        assert made and directory.is_dir() and not any(directory.iterdir())
    finally:
        directory.rmdir()
    # process_dead drops a dead worker's live gauges, keeps its counters and histograms.
    for name in ("gauge_livesum_4242.db", "gauge_livemostrecent_4242.db", "counter_4242.db",
                 "histogram_4242.db", "gauge_livesum_4343.db"):
        (configured / name).write_bytes(b"")
    metrics.process_dead(4242, configured)
    assert sorted(p.name for p in configured.glob("*.db")) == ["counter_4242.db", "gauge_livesum_4343.db",
                                                               "histogram_4242.db"]


def test_gunicorn_config_does_not_import_prometheus_client(tmp_path: Path) -> None:
    """The master imports it; the workers' prometheus_client must first see the directory."""
    check = ("import sys, metamcp.gunicorn_conf; "
             "sys.exit('prometheus_client' in sys.modules or 'metamcp.app' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, timeout=60,
                            env=child_env(METAMCP_DATA_DIR=str(tmp_path), PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_settings(tmp_path: Path) -> None:
    base = {"METAMCP_DATA_DIR": str(tmp_path), "JWT_SECRET": TEST_JWT_SECRET,
            "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY.hex()}
    settings = load_settings(base)
    assert (settings.metrics, settings.metrics_token, settings.metrics_public, settings.metrics_dir) == (True, "", False, None)
    settings = load_settings({**base, "METAMCP_METRICS": "off", "METAMCP_METRICS_TOKEN": TOKEN,
                              "METAMCP_METRICS_PUBLIC": "on", "PROMETHEUS_MULTIPROC_DIR": "/run/prom"})
    assert (settings.metrics, settings.metrics_token, settings.metrics_public, settings.metrics_dir) == (False, TOKEN, True, Path("/run/prom"))
    assert TOKEN not in repr(settings)
    for name, bad in (("METAMCP_METRICS_TOKEN", "short"), ("METAMCP_METRICS_TOKEN", "a b" * 20),
                      ("METAMCP_METRICS_PUBLIC", "yes"), ("METAMCP_METRICS", "1"),
                      ("PROMETHEUS_MULTIPROC_DIR", "relative/dir")):
        with pytest.raises(ConfigError) as raised:
            load_settings({**base, name: bad})
        assert raised.value.setting == name
        assert bad not in str(raised.value) or name != "METAMCP_METRICS_TOKEN"


# --- GET /metrics ---------------------------------------------------------------------------


@pytest.fixture
def keyed(settings: Settings, db: Database, make_key: object) -> tuple[FlaskClient, str, str, Flask]:
    from metamcp import crypto, repository

    app = create_app(dataclasses.replace(settings, metrics_token=TOKEN), listen=False)
    keys = {}
    with db.transaction() as cur:
        for role in ("admin", "client"):
            new = crypto.generate_api_key()
            repository.insert_key(cur, role, new.hash, new.prefix, role)
            keys[role] = new.plain
    return app.test_client(), keys["admin"], keys["client"], app


def scrape(client: FlaskClient, **headers: str) -> TestResponse:
    answer = client.get("/metrics", headers=headers)
    answer.close()  # what the WSGI server does once the response is sent: the sinks run
    return answer


def test_who_may_read_metrics(keyed: tuple[FlaskClient, str, str, Flask]) -> None:
    client, admin, client_key, app = keyed
    try:
        refused = scrape(client)
        assert refused.status_code == 401 and refused.json is not None and refused.json["error"] == "unauthorized"
        assert scrape(client, Authorization="Bearer " + "x" * 40).status_code == 401
        forbidden = scrape(client, **{"X-API-Key": client_key})
        assert forbidden.status_code == 403 and forbidden.json is not None and forbidden.json["error"] == "forbidden"
        for headers in ({"X-API-Key": admin}, {"Authorization": f"Bearer {admin}"},
                        {"Authorization": f"Bearer {TOKEN}"}):
            answer = scrape(client, **headers)
            assert answer.status_code == 200, answer.data
            assert answer.content_type.startswith("text/plain")
            assert b"# TYPE metamcp_http_requests_total counter" in answer.data
            assert TOKEN.encode() not in answer.data and admin.encode() not in answer.data
        # The scrapes before were counted under the route template.
        text = scrape(client, Authorization=f"Bearer {TOKEN}").get_data(as_text=True)
        assert 'metamcp_http_requests_total{method="GET",route="/metrics",status="401"}' in text
        assert 'metamcp_http_requests_total{method="GET",route="/metrics",status="403"}' in text
    finally:
        app.extensions["metamcp"].close()


def test_public_metrics_and_metrics_off(settings: Settings, db: Database) -> None:
    public = create_app(dataclasses.replace(settings, metrics_public=True), listen=False)
    off = create_app(dataclasses.replace(settings, metrics=False), listen=False)
    try:
        assert scrape(public.test_client()).status_code == 200
        answer = scrape(off.test_client())
        assert answer.status_code == 404 and answer.json is not None and "METAMCP_METRICS" in answer.json["message"]
        assert "/metrics" not in public.test_client().get("/openapi.json").get_data(as_text=True)
    finally:
        public.extensions["metamcp"].close()
        off.extensions["metamcp"].close()


def test_record_costs_microseconds(enabled: metrics.Instruments) -> None:
    """The sink runs after every response; a tools/call's record stays in microseconds."""
    obs = observation(duration=0.002, mcp_method="tools/call")
    op = obs.operation("tools/call", "bench__t")
    op.routed("bench", "t")
    op.upstream_seconds = 0.0015
    metrics.record(obs)
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.record(obs)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 200e-6, per_call  # generous for a loaded CI machine; typically ~10 µs
    assert observe.current() is None


def test_instruments_are_single_process_without_the_variable(enabled: metrics.Instruments) -> None:
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert enabled.multiprocess is False
