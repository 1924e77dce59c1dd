"""End to end: gunicorn started exactly as `make run` starts it, used as an admin would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import requests

from metamcp.db import Database

from .conftest import ROOT, Gunicorn, child_env, run_keys


def create_key(env: dict[str, str], name: str = "e2e") -> dict:
    result = run_keys(env, "create", "--name", name, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def token(base: str, key: str) -> str:
    response = requests.post(f"{base}/api/v1/auth/token", json={"api_key": key}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_run_default_embedded_database(tmp_path: Path, start_gunicorn: Callable[..., Gunicorn]) -> None:
    data = Path("/tmp") / f"mme2e{os.getpid()}"  # short: the PostgreSQL socket lives inside
    env = child_env(METAMCP_DATA_DIR=str(data), METAMCP_WORKERS="3")
    try:
        server = start_gunicorn(env)
        secrets_file = data / "secrets.env"
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        said = server.output()  # what `make run` says it is doing, in order
        steps = [f"generated JWT_SECRET and ENCRYPTION_KEY into {secrets_file}",
                 f"starting embedded PostgreSQL in {data / 'postgres'}", f"serving on {server.url}"]
        assert all(step in said for step in steps), said
        assert [said.index(step) for step in steps] == sorted(said.index(step) for step in steps)
        pg_pid = postmaster_pid(data / "postgres")
        assert pg_pid is not None and pid_alive(pg_pid)

        key = create_key(env)  # the CLI finds the same embedded database
        base = server.url
        jwt = token(base, key["key"])
        auth = {"Authorization": f"Bearer {jwt}"}
        created = requests.post(f"{base}/api/v1/mcp/servers", headers=auth, timeout=5, json={
            "name": "one", "transport": "streamable_http", "url": "http://127.0.0.1:3001/mcp"})
        assert created.status_code == 201, created.text
        # Many requests: they spread over the three workers, each with its own cache.
        for _ in range(30):
            assert requests.get(f"{base}/api/v1/mcp/servers", headers=auth, timeout=5).status_code == 200

        assert run_keys(env, "inactivate", str(key["id"])).returncode == 0
        time.sleep(1.0)
        statuses = {requests.get(f"{base}/api/v1/mcp/servers", headers=auth, timeout=5).status_code
                    for _ in range(30)}
        assert statuses == {401}
        assert requests.get(f"{base}/openapi.json", timeout=5).json()["info"]["title"] == "MetaMCP"

        assert server.stop(signal.SIGINT) == 0  # Ctrl-C
        deadline = time.monotonic() + 10
        while pid_alive(pg_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(pg_pid), "embedded PostgreSQL left running"

        # A second run reuses the data and the secrets.
        again = start_gunicorn(env)
        other = create_key(env, "second")
        assert run_keys(env, "activate", str(key["id"])).returncode == 0
        response = requests.get(f"{again.url}/api/v1/mcp/servers", headers={"X-API-Key": key["key"]}, timeout=5)
        assert [s["name"] for s in response.json()["servers"]] == ["one"]
        assert token(again.url, other["key"])
        assert again.stop(signal.SIGTERM) == 0
    finally:
        pid = postmaster_pid(data / "postgres")
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGQUIT)
        subprocess.run(["rm", "-rf", str(data)], check=False)


def test_external_database_url_starts_nothing(tmp_path: Path, database_url: str, db: Database,
                                              start_gunicorn: Callable[..., Gunicorn]) -> None:
    env = child_env(METAMCP_DATA_DIR=str(tmp_path), DATABASE_URL=database_url, METAMCP_WORKERS="2")
    server = start_gunicorn(env)
    assert not (tmp_path / "postgres").exists()
    key = create_key(env)
    assert requests.get(f"{server.url}/api/v1/mcp/servers", headers={"X-API-Key": key["key"]},
                        timeout=5).status_code == 200
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM api_keys WHERE id = %s", (key["id"],))
        assert cur.fetchone()[0] == 1


def start_failure(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:metamcp.gunicorn_conf"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_bad_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    bad_key = start_failure(child_env(METAMCP_DATA_DIR=str(tmp_path), ENCRYPTION_KEY="not-a-key",
                                      METAMCP_PORT="1"))
    assert bad_key.returncode == 1
    assert bad_key.stderr.strip().splitlines() == [bad_key.stderr.strip()]
    assert bad_key.stderr.startswith("metamcp: cannot start: ENCRYPTION_KEY:")

    no_db = start_failure(child_env(METAMCP_DATA_DIR=str(tmp_path),
                                    DATABASE_URL="postgresql://metamcp:hunter2@127.0.0.1:1/x"))
    assert no_db.returncode == 1
    assert "metamcp: cannot start: DATABASE_URL: cannot connect" in no_db.stderr
    assert "hunter2" not in no_db.stderr and "Traceback" not in no_db.stderr


def test_start_up_says_what_it_does_and_a_taken_port_is_one_line(
        tmp_path: Path, database_url: str, db: Database, start_gunicorn: Callable[..., Gunicorn]) -> None:
    env = child_env(METAMCP_DATA_DIR=str(tmp_path), DATABASE_URL=database_url, METAMCP_WORKERS="1")
    first = start_gunicorn(env)
    secrets_file = tmp_path / "secrets.env"
    lines = first.output()
    assert f"generated JWT_SECRET and ENCRYPTION_KEY into {secrets_file}" in lines
    assert f"serving on http://127.0.0.1:{first.port}" in lines
    assert "embedded PostgreSQL" not in lines  # DATABASE_URL: nothing to start

    # A second gateway on the same port: one line naming the port, exit 1 at once, nothing left.
    began = time.monotonic()
    taken = start_failure({**env, "METAMCP_PORT": str(first.port)})
    assert time.monotonic() - began < 4  # gunicorn alone retried its bind for 5 s, then exit 2
    assert taken.returncode == 1, taken.stderr
    # Only gunicorn's own "Starting gunicorn" comes before the one line; no retries, no traceback.
    assert taken.stderr.strip().splitlines()[1:] == [
        f"metamcp: cannot start: port {first.port} is in use (another gateway?); "
        "stop what listens there or set METAMCP_PORT"]
    assert requests.get(f"{first.url}/ready", timeout=5).status_code == 200  # the first still serves

    # A second run: the secrets exist, so nothing is said about them.
    assert first.stop(signal.SIGTERM) == 0
    again = start_gunicorn(env)
    assert "generated JWT_SECRET" not in again.output()
    assert f"serving on http://127.0.0.1:{again.port}" in again.output()


def test_taken_port_starts_no_embedded_postgres(tmp_path: Path) -> None:
    data = Path("/tmp") / f"mmport{os.getpid()}"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            taken = start_failure(child_env(METAMCP_DATA_DIR=str(data), METAMCP_PORT=str(port)))
            assert taken.returncode == 1, taken.stderr
            assert taken.stderr.strip().splitlines()[1:] == [
                f"metamcp: cannot start: port {port} is in use (another gateway?); "
                "stop what listens there or set METAMCP_PORT"]
            # Checked before anything starts: no PostgreSQL cluster, no secrets.
            assert not (data / "postgres").exists() and not (data / "secrets.env").exists()
        finally:
            subprocess.run(["rm", "-rf", str(data)], check=False)


def test_make_install_step_is_quiet_but_says_so() -> None:
    """The install step names what it does, and pip's and the editable build's output stays
    hidden (--quiet on every pip call; the setuptools banner comes from the build backend)."""
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    pip_lines = [line for line in recipe.splitlines() if "pip install" in line]
    assert pip_lines and all("--quiet --quiet" in line for line in pip_lines)  # measured: one --quiet shows it
    assert "installing dependencies into" in recipe
