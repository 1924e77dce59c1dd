"""scripts/audit.py as an operator runs it: subprocesses against the test database, --json;
and changes made by scripts/keys.py recorded with the actor `cli`."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from metamcp import audit_repository
from metamcp.db import Database

from .conftest import ROOT, child_env, run_keys


@pytest.fixture
def env(database_url: str, db: Database, tmp_path: Path) -> dict[str, str]:
    with db.transaction() as cur:
        cur.execute("TRUNCATE audit_log")
    return child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path))


def run_audit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "audit.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def audit_json(env: dict[str, str], *args: str) -> Any:
    result = run_audit(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def calls(db: Database, *specs: tuple[str, str, str, float]) -> None:
    """Call records (key name, server, outcome, duration ms), a millisecond apart, oldest first."""
    now = time.time() - len(specs) * 0.001
    with db.transaction() as cur:
        audit_repository.insert_calls(cur, [
            (now + i * 0.001, "call", "key", 1 if key == "alice" else 2, key, f"r{i}", "s", None, "tools/call",
             server, f"{server}__t", "t", outcome, -32603 if outcome == "error" else None, 200, ms, ms / 2, 99,
             "h", 4242) for i, (key, server, outcome, ms) in enumerate(specs)])


def test_query_tail_and_usage_print_json_and_tables(env: dict[str, str], db: Database) -> None:
    calls(db, ("alice", "a", "ok", 10.0), ("alice", "a", "error", 30.0), ("bob", "b", "ok", 20.0))
    entries = audit_json(env, "query", "--server", "a")["entries"]
    assert [(e["request_id"], e["outcome"], e["error_code"]) for e in entries] == [
        ("r1", "error", -32603), ("r0", "ok", None)]
    assert audit_json(env, "query", "--key", "2", "--since", "1h")["entries"][0]["key_name"] == "bob"
    assert audit_json(env, "query", "--until", "2000-01-01")["entries"] == []
    first = audit_json(env, "query", "--limit", "2")
    assert len(first["entries"]) == 2 and first["next_cursor"]
    rest = audit_json(env, "query", "--limit", "2", "--cursor", first["next_cursor"])
    assert [e["request_id"] for e in rest["entries"]] == ["r0"] and rest["next_cursor"] is None
    assert [e["request_id"] for e in audit_json(env, "tail", "-n", "2")] == ["r1", "r2"]  # oldest first
    usage = audit_json(env, "usage", "--by", "key", "--since", "7d")
    figures = {g["key_name"]: (g["calls"], g["errors"], g["p50_ms"]) for g in usage["groups"]}
    assert figures == {"alice": (2, 1, 20.0), "bob": (1, 0, 20.0)}
    table = run_audit(env, "usage", "--by", "server")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["SERVER", "CALLS", "ERRORS"]
    listing = run_audit(env, "query", "--outcome", "error").stdout.splitlines()
    assert listing[0].split()[:4] == ["AT", "KIND", "WHO", "ACTION"] and "alice (1)" in listing[1]
    assert len(listing) == 2 and "error -32603" in listing[1]


def test_bad_arguments_fail_with_one_line(env: dict[str, str]) -> None:
    for args in (("query", "--since", "yesterday"), ("query", "--limit", "0"), ("usage", "--by", "day"),
                 ("tail", "--interval", "0")):
        result = run_audit(env, *args)
        assert result.returncode == 2 and "audit.py" in result.stderr and "Traceback" not in result.stderr
    bad = run_audit(env, "query", "--cursor", "garbage")
    assert bad.returncode == 1 and bad.stderr.startswith("audit.py: --cursor:")


def test_tail_follow_prints_new_records_and_ends_on_ctrl_c(env: dict[str, str], db: Database) -> None:
    calls(db, ("alice", "a", "ok", 1.0))
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "audit.py"), "tail", "--follow", "--json",
                             "--interval", "0.2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def line(timeout: float = 10.0) -> dict[str, Any]:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            assert ready, "no line in time"
            return dict(json.loads(proc.stdout.readline()))

        assert line()["request_id"] == "r0"
        calls(db, ("bob", "b", "tool_error", 2.0))
        record = line()
        assert (record["key_name"], record["outcome"]) == ("bob", "tool_error")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_changes_by_the_key_script_are_recorded_as_cli(env: dict[str, str], db: Database) -> None:
    created = run_keys(env, "create", "--name", "laptop", "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert run_keys(env, "inactivate", str(made["id"])).returncode == 0
    assert run_keys(env, "delete", str(made["id"]), "--confirm").returncode == 0
    changes = audit_json(env, "query", "--kind", "admin")["entries"]
    assert [(c["action"], c["actor"], c["key_id"]) for c in changes] == [
        ("key.delete", "cli", None), ("key.update", "cli", None), ("key.create", "cli", None)]
    assert (changes[1]["before"]["is_active"], changes[1]["after"]["is_active"]) == (True, False)
    assert made["key"] not in json.dumps(changes)
