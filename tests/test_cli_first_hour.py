"""The admin scripts as a new user meets them (issue 14): run from any folder they reach the
project's data, never a new database by accident; their options work where the help shows them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from metamcp.admin_data import script_environment, would_create
from metamcp.db import Database

from .conftest import ROOT, child_env


def run_script(name: str, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=90)


def test_the_checkouts_data_is_found_from_any_folder() -> None:
    root = Path("/home/me/metamcp")
    # Nothing set: the checkout's .data, whatever the working directory.
    assert script_environment(root, {}, {})["METAMCP_DATA_DIR"] == "/home/me/metamcp/.data"
    # The root's .env: a relative data dir is the root's, as for `make run`; an absolute one stays.
    assert script_environment(root, {}, {"METAMCP_DATA_DIR": "state"})["METAMCP_DATA_DIR"] == "/home/me/metamcp/state"
    assert script_environment(root, {}, {"METAMCP_DATA_DIR": "/srv/mm"})["METAMCP_DATA_DIR"] == "/srv/mm"
    # The process environment wins over the root's .env.
    values = script_environment(root, {"METAMCP_DATA_DIR": "/var/mm", "DATABASE_URL": "postgresql://a/b"},
                                {"METAMCP_DATA_DIR": "state", "DATABASE_URL": "postgresql://c/d", "X": "1"})
    assert (values["METAMCP_DATA_DIR"], values["DATABASE_URL"], values["X"]) == ("/var/mm", "postgresql://a/b", "1")


def test_would_create_names_what_is_missing(tmp_path: Path) -> None:
    values = {"METAMCP_DATA_DIR": str(tmp_path)}
    assert would_create(values) == [f"an embedded PostgreSQL in {tmp_path / 'postgres'}",
                                    f"new secrets in {tmp_path / 'secrets.env'}"]
    assert would_create({**values, "DATABASE_URL": "postgresql://x/y"}) == []
    (tmp_path / "secrets.env").write_text("JWT_SECRET=a\nENCRYPTION_KEY=b\n")
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text("16\n")
    assert would_create(values) == []


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data directory with a short path (the embedded server's Unix socket lives in it)."""
    path = Path(tempfile.mkdtemp(prefix="mmh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_scripts_refuse_to_create_a_database_unless_init(short_dir: Path, tmp_path: Path) -> None:
    data = short_dir / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A .env in the working directory is not the project's: ignored (it would point elsewhere).
    (elsewhere / ".env").write_text("DATABASE_URL=postgresql://nobody@127.0.0.1:1/none\n")
    # Empty, not absent: a DATABASE_URL in the checkout's .env must not take over (the environment wins).
    env = child_env(METAMCP_DATA_DIR=str(data), DATABASE_URL="")
    for script, args in (("keys.py", ["list"]), ("servers.py", ["export"]), ("audit.py", ["tail"])):
        refused = run_script(script, env, elsewhere, *args)
        assert refused.returncode == 1, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: no MetaMCP data found"), refused.stderr
        assert str(data / "postgres") in lines[0] and "--init" in lines[0]
        assert not data.exists() and refused.stdout == ""
    created = run_script("keys.py", env, elsewhere, "--init", "create", "--name", "first", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert (data / "postgres" / "PG_VERSION").is_file() and (data / "secrets.env").is_file()
    # From another folder, the prepared data directory is used: the same key, no --init needed.
    listed = run_script("keys.py", env, tmp_path, "--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert [(k["id"], k["name"]) for k in json.loads(listed.stdout)] == [(key["id"], "first")]


@pytest.fixture
def env(database_url: str, db: Database, tmp_path: Path) -> dict[str, str]:
    return child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path))


def test_json_before_or_after_the_subcommand(env: dict[str, str], tmp_path: Path) -> None:
    assert run_script("keys.py", env, tmp_path, "create", "--name", "a").returncode == 0
    for args in (["--json", "list"], ["list", "--json"]):
        result = run_script("keys.py", env, tmp_path, *args)
        assert result.returncode == 0, result.stderr
        assert [k["name"] for k in json.loads(result.stdout)] == ["a"], args
    table = run_script("keys.py", env, tmp_path, "list")
    assert table.stdout.startswith("ID ")
    for args in (["--json", "tail"], ["tail", "--json"]):
        result = run_script("audit.py", env, tmp_path, *args)
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout), list), args


def test_delete_without_confirm_names_the_flag(env: dict[str, str], tmp_path: Path) -> None:
    created = json.loads(run_script("keys.py", env, tmp_path, "--json", "create", "--name", "keep").stdout)
    result = run_script("keys.py", env, tmp_path, "delete", str(created["id"]))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"keys.py: deleting key {created['id']} cannot be undone; add --confirm to delete it"]
    assert "usage:" not in result.stderr
    shown = run_script("keys.py", env, tmp_path, "--json", "show", str(created["id"]))
    assert json.loads(shown.stdout)["name"] == "keep"


def test_bench_help_has_whole_paragraphs() -> None:
    result = run_script("bench.py", child_env(), ROOT, "--help")
    assert result.returncode == 0, result.stderr
    description = result.stdout.split("\n\n", 1)[1].split("\noptions:", 1)[0]
    for paragraph in description.strip().split("\n\n"):
        lines = paragraph.splitlines()
        if lines[0].startswith("    "):  # a usage example
            continue
        assert paragraph.rstrip().endswith("."), paragraph
        # A prose line far shorter than the width reads as a sentence cut off.
        assert all(len(line) >= 60 for line in lines[:-1]), paragraph
