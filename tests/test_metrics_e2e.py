"""GET /metrics through a live gunicorn (2 workers) and a real upstream: tools/call answered by
both workers summed into one view, the call's time split into upstream and gateway-added time
that add up to what the gateway and the client measured, who may scrape, no label for an
unknown tool, a dead worker's live gauges dropped, and the multiprocess directory the master
made removed when it exits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .upstreams import UpstreamProcess

TOKEN = "t0ken-for-prometheus-" + "k" * 20
ACCEPT = "application/json, text/event-stream"
SLEEP = 0.05
TOOL = {"server": "slowpoke", "tool": "slow"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Deployment:
    gateway: Gunicorn
    keys: dict[str, str]
    tmp: Path

    @property
    def metrics_dir(self) -> Path:
        [directory] = list(self.tmp.glob("metamcp-metrics-*"))
        return directory

    def scrape(self, **headers: str) -> requests.Response:
        return requests.get(self.gateway.url + "/metrics", headers=headers, timeout=30)

    def samples(self) -> Samples:
        answer = self.scrape(Authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 200, answer.text
        return parse(answer.text)

    def worker_pids(self) -> set[int]:
        return {int(p.stem.rsplit("_", 1)[1]) for p in self.metrics_dir.glob("counter_*.db")}


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    keys = fresh_keys(database_url, admin="admin", client="client")
    tmp = tmp_path_factory.mktemp("prom")  # TMPDIR: where the master makes its metrics directory
    upstream = UpstreamProcess(name="slowpoke")
    gateway = Gunicorn(child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                                 METAMCP_WORKERS="2", METAMCP_UPSTREAM_TIMEOUT="10", METAMCP_LOG_LEVEL="WARNING",
                                 METAMCP_METRICS_TOKEN=TOKEN, TMPDIR=str(tmp)), free_port())
    try:
        upstream.start()
        gateway.wait_ready()
        created = requests.post(gateway.url + "/api/v1/mcp/servers", headers={"X-API-Key": keys["admin"]},
                                timeout=30, json={"name": "slowpoke", "transport": "streamable_http",
                                                  "url": upstream.url})
        assert created.status_code == 201, created.text
        yield Deployment(gateway, keys, tmp)
    finally:
        gateway.stop()
        upstream.stop()


def open_session(d: Deployment) -> dict[str, str]:
    headers = {"X-API-Key": d.keys["client"], "Accept": ACCEPT, "Content-Type": "application/json"}
    reply = requests.post(d.gateway.url + "/mcp", headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "m", "version": "1"}}})
    assert reply.status_code == 200, reply.text
    return {**headers, "Mcp-Session-Id": reply.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}


def call(d: Deployment, headers: dict[str, str], name: str, arguments: dict[str, Any]) -> tuple[str, float]:
    """One tools/call on a new connection (so either worker may take it): its body and the
    seconds the client waited for all of it."""
    started = time.perf_counter()
    reply = requests.post(d.gateway.url + "/mcp", headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
    body = reply.text
    waited = time.perf_counter() - started
    assert reply.status_code == 200, body
    return body, waited


def per_worker_calls(d: Deployment) -> dict[int, float]:
    """Each worker's own count of slowpoke's calls, read from its own file."""
    counts = {}
    for pid in d.worker_pids():
        files = [str(p) for p in d.metrics_dir.glob(f"histogram_{pid}.db")]
        merged = {(s.name, frozenset(s.labels.items())): s.value
                  for m in MultiProcessCollector.merge(files) for s in m.samples}
        counts[pid] = get(merged, "metamcp_tool_call_upstream_seconds_count", **TOOL)
    return counts


def test_tool_calls_of_both_workers_are_summed_and_split_into_upstream_and_gateway_time(
        deployment: Deployment) -> None:
    d = deployment
    before = d.samples()
    headers = open_session(d)
    waited: list[float] = []
    # New connections until both workers answered some (bounded).
    while len(waited) < 40 and (len(waited) < 6 or sum(1 for n in per_worker_calls(d).values() if n) < 2):
        body, seconds = call(d, headers, "slowpoke__slow", {"seconds": SLEEP})
        assert f"slept {SLEEP}" in body, body
        waited.append(seconds)
    workers = per_worker_calls(d)
    assert sum(1 for n in workers.values() if n) == 2, workers
    after = d.samples()

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    calls = len(waited)
    # One view: the scrape sums what each worker counted in its own file.
    assert delta("metamcp_tool_calls_total", outcome="ok", **TOOL) == calls
    assert get(after, "metamcp_tool_call_upstream_seconds_count", **TOOL) == sum(workers.values())
    assert delta("metamcp_mcp_requests_total", method="tools/call", outcome="ok") == calls
    assert delta("metamcp_mcp_requests_total", method="initialize", outcome="ok") == 1
    assert delta("metamcp_http_requests_total", route="/mcp", method="POST", status="200") == calls + 1
    assert delta("metamcp_sessions_created_total") == 1
    for name in ("metamcp_tool_call_upstream_seconds", "metamcp_tool_call_gateway_seconds",
                 "metamcp_tool_call_seconds"):
        assert delta(name + "_count", **TOOL) == calls
    upstream = delta("metamcp_tool_call_upstream_seconds_sum", **TOOL)
    gateway = delta("metamcp_tool_call_gateway_seconds_sum", **TOOL)
    total = delta("metamcp_tool_call_seconds_sum", **TOOL)
    client = sum(waited)
    assert upstream >= calls * SLEEP  # the upstream slept that long in each call
    assert 0 < gateway < calls * 0.1, gateway  # the gateway's share: positive, a few milliseconds
    assert upstream + gateway == pytest.approx(total, abs=1e-6 * calls)
    assert total <= client  # the client also waits for connections and transfer
    assert client - total < calls * 0.1, (client, total)
    # Gateway-added time lands in the fine buckets (most under 25 ms even on a busy machine).
    assert delta("metamcp_tool_call_gateway_seconds_bucket", le="0.025", **TOOL) >= calls / 2
    assert delta("metamcp_tool_call_upstream_seconds_bucket", le="0.025", **TOOL) == 0
    # Live gauges are summed over the live workers: each worker's pool of 16.
    assert get(after, "metamcp_db_connections_max") == 32
    assert get(after, "metamcp_tool_calls_in_flight") == 0
    assert get(after, "metamcp_upstream_up", server="slowpoke") == 1
    assert delta("metamcp_db_transaction_seconds_count") >= 1


def test_who_may_scrape(deployment: Deployment) -> None:
    d = deployment
    refused = d.scrape()
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert d.scrape(Authorization="Bearer " + TOKEN[:-1] + "x").status_code == 401
    forbidden = d.scrape(**{"X-API-Key": d.keys["client"]})
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    for headers in ({"X-API-Key": d.keys["admin"]}, {"Authorization": f"Bearer {TOKEN}"}):
        answer = d.scrape(**headers)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        assert "metamcp_tool_call_gateway_seconds" in answer.text


def test_an_unknown_tool_never_becomes_a_label(deployment: Deployment) -> None:
    d = deployment
    before = d.samples()
    headers = open_session(d)
    for name in ("slowpoke__no_such_tool", "ghost_server__anything"):
        body, _ = call(d, headers, name, {})
        assert '"error"' in body
    after = d.samples()
    text = d.scrape(Authorization=f"Bearer {TOKEN}").text
    assert "no_such_tool" not in text and "ghost_server" not in text
    assert (get(after, "metamcp_mcp_requests_total", method="tools/call", outcome="error")
            - get(before, "metamcp_mcp_requests_total", method="tools/call", outcome="error")) == 2


def test_a_dead_workers_live_gauges_go_and_its_counts_stay(deployment: Deployment) -> None:
    d = deployment
    before = d.samples()
    pids = d.worker_pids()
    victim = max(pids, key=lambda pid: per_worker_calls(d).get(pid, 0))
    assert (d.metrics_dir / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (d.metrics_dir / f"gauge_livesum_{victim}.db").exists():
        time.sleep(0.05)
    assert not (d.metrics_dir / f"gauge_livesum_{victim}.db").exists()  # mark_process_dead
    assert (d.metrics_dir / f"histogram_{victim}.db").exists()
    # gunicorn starts a replacement; once it serves, the live sums are those of two workers again.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(d.worker_pids() - {victim}) < 2:
        time.sleep(0.1)
    after = d.samples()
    assert get(after, "metamcp_db_connections_max") == 32
    for name in ("metamcp_tool_call_upstream_seconds_count", "metamcp_tool_call_gateway_seconds_sum"):
        assert get(after, name, **TOOL) == get(before, name, **TOOL)  # the dead worker's calls still count


def test_the_master_removes_its_metrics_directory_when_it_stops(deployment: Deployment) -> None:
    """Last in this module: it stops the gateway."""
    directory = deployment.metrics_dir
    assert directory.is_dir()
    assert deployment.gateway.stop() == 0
    assert not directory.exists()
