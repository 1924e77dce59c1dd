"""scripts/keys.py as an admin runs it: a subprocess against the test database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metamcp.db import Database

from .conftest import child_env, run_keys


@pytest.fixture
def env(database_url: str, db: Database, tmp_path: Path) -> dict[str, str]:
    return child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path))


def keys_json(env: dict[str, str], *args: str) -> object:
    result = run_keys(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_create_prints_the_key_once_and_stores_only_a_hash(env: dict[str, str], db: Database) -> None:
    result = run_keys(env, "create", "--name", "laptop")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("mcp_") and len(key) == 47
    assert "laptop" in result.stdout and "ACTIVE" in result.stdout
    with db.transaction() as cur:
        cur.execute("SELECT encode(key_hash, 'hex') AS h, key_prefix FROM api_keys")
        row = cur.fetchone()
    assert key.startswith(row["key_prefix"]) and key not in row["h"]
    listed = run_keys(env, "list")
    assert "laptop" in listed.stdout and key not in listed.stdout


def test_full_lifecycle_in_json(env: dict[str, str]) -> None:
    created = keys_json(env, "create", "--name", "ci")
    assert isinstance(created, dict) and created["key"].startswith("mcp_")
    key_id = created["id"]
    assert keys_json(env, "show", str(key_id))["name"] == "ci"
    assert keys_json(env, "inactivate", str(key_id))["is_active"] is False
    assert keys_json(env, "list") == []
    assert [k["id"] for k in keys_json(env, "list", "--include-inactive")] == [key_id]
    assert keys_json(env, "activate", str(key_id))["is_active"] is True
    rotated = keys_json(env, "rotate", str(key_id))
    assert rotated["id"] != key_id and rotated["key"] != created["key"] and rotated["name"] == "ci"
    assert keys_json(env, "show", str(key_id))["is_active"] is False
    assert keys_json(env, "delete", str(key_id), "--confirm") == {"deleted": key_id}
    assert [k["id"] for k in keys_json(env, "list", "--include-inactive")] == [rotated["id"]]


def test_failures_exit_1_with_a_message(env: dict[str, str]) -> None:
    for args in (["show", "999"], ["inactivate", "999"], ["rotate", "999"],
                 ["delete", "999", "--confirm"], ["create", "--name", "  "]):
        result = run_keys(env, *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("keys.py: ") and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    created = keys_json(env, "create", "--name", "keep")
    for args in (["show", "abc"], ["frobnicate"], [], ["create"]):
        result = run_keys(env, *args)
        assert result.returncode == 2, args
        assert "usage:" in result.stderr
    assert keys_json(env, "show", str(created["id"]))["name"] == "keep"


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    env = child_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", METAMCP_DATA_DIR=str(tmp_path))
    result = run_keys(env, "list")
    assert result.returncode == 1
    assert result.stderr.startswith("keys.py: DATABASE_URL: cannot connect")
    assert len(result.stderr.strip().splitlines()) == 1


def test_roles_and_rate_limits(env: dict[str, str], db: Database) -> None:
    with db.transaction() as cur:
        cur.execute("INSERT INTO namespaces (name) VALUES ('research')")
    seed = keys_json(env, "create", "--name", "seed")
    assert (seed["role"], seed["scoped"], seed["rate_limit"]) == ("admin", False, None)  # as before roles
    bot = keys_json(env, "create", "--name", "bot", "--role", "client", "--rate-limit", "120")
    assert (bot["role"], bot["scoped"], bot["rate_limit"]) == ("client", False, 120)
    limited = keys_json(env, "create", "--name", "lim", "--namespace", "research")
    assert (limited["role"], limited["namespaces"]) == ("client", ["research"])
    table = run_keys(env, "list").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "NAME", "PREFIX", "ROLE"] and "RATE LIMIT" in table[0]
    rows = {line.split()[1]: line.split() for line in table[1:]}
    assert rows["seed"][3] == "admin" and rows["seed"][-2:] == ["*", "default"]
    assert rows["bot"][3] == "client" and rows["bot"][-1] == "120/min"
    assert rows["lim"][3] == "client" and rows["lim"][-2:] == ["research", "default"]
    shown = run_keys(env, "show", str(bot["id"])).stdout
    assert "client" in shown and "120/min" in shown
    changed = keys_json(env, "set", str(bot["id"]), "--role", "admin", "--rate-limit", "default")
    assert (changed["role"], changed["rate_limit"]) == ("admin", None)
    changed = keys_json(env, "set", str(limited["id"]), "--role", "admin")  # lifts the limit
    assert (changed["role"], changed["scoped"]) == ("admin", False)
    changed = keys_json(env, "set", str(limited["id"]), "--namespace", "research", "--rate-limit", "7")
    assert (changed["role"], changed["namespaces"], changed["rate_limit"]) == ("client", ["research"], 7)
    rotated = keys_json(env, "rotate", str(limited["id"]))
    assert (rotated["role"], rotated["namespaces"], rotated["rate_limit"]) == ("client", ["research"], 7)


def test_role_usage_errors(env: dict[str, str]) -> None:
    admin_scoped = run_keys(env, "create", "--name", "x", "--role", "admin", "--namespace", "research")
    assert admin_scoped.returncode == 2 and "--role admin cannot be combined with --namespace" in admin_scoped.stderr
    for args in (["create", "--name", "x", "--role", "root"], ["create", "--name", "x", "--rate-limit", "0"],
                 ["set", "1"], ["set", "1", "--rate-limit", "lots"], ["set", "1", "--role", "admin", "--namespace", "r"]):
        result = run_keys(env, *args)
        assert result.returncode == 2 and "usage:" in result.stderr, args
    assert keys_json(env, "list") == []  # nothing was created
    assert run_keys(env, "set", "99", "--role", "client").returncode == 1
    help_text = " ".join(run_keys(env, "create", "--help").stdout.split())
    assert "client with --namespace" in help_text and "run commands on the host" in help_text
