"""Booting: reading gunicorn's config writes nothing, plain `gunicorn wsgi:app` serves with only
DATABASE_URL set, and a regular (non-editable) install finds the top-level migrations."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import requests

from metamcp.db import migration_ids
from tests.conftest import ROOT, child_env, free_port, scratch_database


def test_reading_the_gunicorn_config_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = child_env(METAMCP_DATA_DIR=str(data), METAMCP_PORT="12345")
    done = subprocess.run(
        [sys.executable, "-c", "import metamcp.gunicorn_conf as c; print(c.bind[0], c.wsgi_app)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["127.0.0.1:12345", "metamcp.app:create_app()"]
    assert list(tmp_path.iterdir()) == []  # no data directory, no secrets, nothing in the folder


def test_plain_gunicorn_serves_with_only_database_url(database_url: str, tmp_path: Path) -> None:
    """A fresh database: the app generates its secrets (in ./.data) and applies the migrations."""
    port = free_port()
    with scratch_database(database_url, "boot", migrated=False) as url:
        env = child_env(DATABASE_URL=url, PYTHONPATH=str(ROOT))
        log = (tmp_path / "gunicorn.log").open("w")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            status = None
            deadline = time.monotonic() + 60
            while status != 200 and time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = requests.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code
                except requests.RequestException:
                    time.sleep(0.2)
            assert status == 200, (tmp_path / "gunicorn.log").read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        assert (tmp_path / ".data" / "secrets.env").is_file()


def test_plain_gunicorn_without_database_url_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, capture_output=True, text=True,
                          env=child_env(METAMCP_DATA_DIR=str(tmp_path)), timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "metamcp: cannot start: DATABASE_URL: not set; `gunicorn wsgi:app` needs one "
        "(`make run` starts an embedded PostgreSQL)"]


def test_a_regular_install_finds_the_migrations(tmp_path: Path) -> None:
    """`pip install .` (not -e): the wheel carries migrations/ and wsgi.py; from another folder
    the installed package finds the same migrations the checkout has."""
    source, wheels, venv = tmp_path / "source", tmp_path / "wheels", tmp_path / "venv"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "wsgi.py"):
        shutil.copy(ROOT / name, source / name)
    for name in ("metamcp", "migrations"):  # built from a copy: no build/ left in the checkout
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, timeout=300, cwd=tmp_path)
    # A venv of its own (with its own pip: this environment's would replace our editable install).
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    *map(str, wheels.glob("metamcp-*.whl"))], check=True, timeout=300)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    # The dependencies come from this environment, after the installed package on the path.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = ("import metamcp.db; print(metamcp.db.__file__); print(metamcp.db.MIGRATIONS_DIR); "
             "print(*metamcp.db.migration_ids())")
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    done = subprocess.run([python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    module, migrations, ids = done.stdout.splitlines()
    assert Path(module).is_relative_to(venv) and Path(migrations).is_relative_to(venv), done.stdout
    assert ids.split() == list(migration_ids())
    assert Path(site, "wsgi.py").is_file()
