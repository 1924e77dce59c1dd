"""A changed ENCRYPTION_KEY: servers it cannot open are errors (start warning, admin view, /mcp,
export), and `scripts/servers.py reseal` moves every secret to the new key in one transaction.

Real PostgreSQL, the Flask test client (settings replaced for the key), the script as a
subprocess, one real upstream for the end-to-end call.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from metamcp.app import create_app
from metamcp.config import Settings
from metamcp.db import Database

from .conftest import ROOT, TEST_ENCRYPTION_KEY, child_env
from .test_mcp_transport import Mcp
from .upstreams import UpstreamProcess

KEY_B = bytes([7] * 32)
SECRETS = {"bearer": "bearer-token-under-key-a-1234", "header": "header-value-under-key-a",
           "env": "env-value-under-key-a-5678"}


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


@pytest.fixture
def upstream() -> Iterator[UpstreamProcess]:
    process = UpstreamProcess("ctx", json_response=True, extra_args=("--context-tools",)).start()
    try:
        yield process
    finally:
        process.stop()


def register(client: Any, headers: dict[str, str], url: str) -> None:
    """Under key A: an HTTP server with a bearer token and a header, a stdio one with an env value."""
    made = client.post("/api/v1/mcp/servers", headers=headers, json={
        "name": "ctx", "transport": "streamable_http", "url": url,
        "bearer_token": SECRETS["bearer"], "headers": {"X-Upstream-Key": SECRETS["header"]}})
    assert made.status_code == 201, made.json
    made = client.post("/api/v1/mcp/servers", headers=headers, json={
        "name": "local", "transport": "stdio", "command": sys.executable, "args": ["-c", "pass"],
        "env": {"LOCAL_TOKEN": SECRETS["env"]}})
    assert made.status_code == 201, made.json


def app_with(settings: Settings, key: bytes) -> Flask:
    return create_app(replace(settings, encryption_key=key), listen=False)


def reseal(database_url: str, tmp_path: Path, key: bytes, *args: str,
           **env: str) -> subprocess.CompletedProcess[str]:
    environment = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path),
                            ENCRYPTION_KEY=b64(key), **env)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "servers.py"), "reseal", *args],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def stored(db: Database) -> dict[str, Any]:
    with db.transaction() as cur:
        cur.execute("SELECT name, bearer_token, headers, env, updated_at FROM mcp_servers ORDER BY name")
        return {row["name"]: dict(row) for row in cur.fetchall()}


def test_a_changed_key_shows_its_servers_as_errors(
        app: Flask, api_key: str, settings: Settings, upstream: UpstreamProcess,
        caplog: pytest.LogCaptureFixture) -> None:
    headers = {"X-API-Key": api_key}
    register(app.test_client(), headers, upstream.url)
    with caplog.at_level(logging.WARNING, logger="metamcp.app"):
        other = app_with(settings, KEY_B)
    try:
        warned = [r.getMessage() for r in caplog.records if r.name == "metamcp.app"]
        assert any("ENCRYPTION_KEY" in line and "ctx" in line and "local" in line for line in warned), warned
        assert not any(secret in line for line in warned for secret in SECRETS.values())
        client = other.test_client()
        servers = client.get("/api/v1/mcp/servers", headers=headers).json["servers"]
        assert all("cannot be decrypted with the current ENCRYPTION_KEY" in s["secrets_error"] for s in servers)
        assert {s["name"] for s in servers} == {"ctx", "local"}
        upstreams = client.get("/api/v1/health", headers=headers).json["upstreams"]
        assert [(u["name"], u["status"]) for u in upstreams] == [("ctx", "error"), ("local", "error")]
        assert "ENCRYPTION_KEY" in upstreams[0]["last_error"]

        mcp = Mcp(client, api_key)
        mcp.initialize()
        reply = mcp.call("tools/call", {"name": "ctx__context", "arguments": {}}).json
        assert reply["error"]["code"] == -32010
        assert "'ctx'" in reply["error"]["message"] and "ENCRYPTION_KEY" in reply["error"]["message"]

        exported = client.get("/api/v1/mcp/servers/export?include_secrets=true", headers=headers)
        assert exported.status_code == 200, exported.json
        text = exported.get_data(as_text=True)
        assert not any(secret in text for secret in SECRETS.values())
        assert exported.json["unreadable"] == ["ctx", "local"]
        assert len(exported.json["warnings"]) == 2 and "ENCRYPTION_KEY" in exported.json["warnings"][0]
        assert exported.json["mcpServers"]["ctx"]["headers"]["Authorization"] == "Bearer ****"
        assert exported.json["mcpServers"]["local"]["env"] == {"LOCAL_TOKEN": "****"}
    finally:
        other.extensions["metamcp"].close()
    # Under the key the secrets were sealed with, nothing is flagged.
    assert all(s["secrets_error"] is None for s in app.test_client().get(
        "/api/v1/mcp/servers", headers=headers).json["servers"])
    assert "unreadable" not in app.test_client().get(
        "/api/v1/mcp/servers/export?include_secrets=true", headers=headers).json


def test_reseal_moves_every_secret_to_the_current_key(
        app: Flask, api_key: str, settings: Settings, db: Database, database_url: str,
        tmp_path: Path, upstream: UpstreamProcess) -> None:
    headers = {"X-API-Key": api_key}
    register(app.test_client(), headers, upstream.url)
    # A gateway already running under key B (listening for changes) sees the servers as errors...
    other = create_app(replace(settings, encryption_key=KEY_B), listen=True)
    try:
        mcp = Mcp(other.test_client(), api_key)
        mcp.initialize()
        call = {"name": "ctx__context", "arguments": {}}
        assert mcp.call("tools/call", call).json["error"]["code"] == -32010
        old_file = tmp_path / "old.key"
        old_file.write_text(b64(TEST_ENCRYPTION_KEY) + "\n")
        done = reseal(database_url, tmp_path, KEY_B, "--old-key-file", str(old_file))
        assert done.returncode == 0, done.stderr
        assert "ctx: 2 secret(s) resealed" in done.stdout and "local: 1 secret(s) resealed" in done.stdout
        assert "resealed 3 secret(s) of 2 server(s)" in done.stdout
        assert not any(secret in done.stdout + done.stderr for secret in SECRETS.values())

        configs = {c.name: c for c in other.extensions["metamcp"].servers.configs(active_only=False)}
        assert configs["ctx"].bearer_token == SECRETS["bearer"]
        assert configs["ctx"].headers == {"X-Upstream-Key": SECRETS["header"]}
        assert configs["local"].env == {"LOCAL_TOKEN": SECRETS["env"]}
        # ...and, told of the change by the reseal's notification, uses them at once.
        deadline = time.monotonic() + 10
        reply = mcp.call("tools/call", call)
        while reply.is_json and "error" in reply.json and time.monotonic() < deadline:
            time.sleep(0.05)
            reply = mcp.call("tools/call", call)
        body = reply.get_data(as_text=True)
        answer = reply.json if reply.is_json else json.loads(
            next(line[5:] for line in body.splitlines() if line.startswith("data:") and '"result"' in line))
        seen = json.loads(answer["result"]["content"][0]["text"])["headers"]
        assert seen["authorization"] == f"Bearer {SECRETS['bearer']}"
        assert seen["x-upstream-key"] == SECRETS["header"]
    finally:
        other.extensions["metamcp"].close()
    # Key A no longer opens them; a second reseal (old key from the environment) has nothing to move.
    assert all(s["secrets_error"] for s in app.test_client().get(
        "/api/v1/mcp/servers", headers=headers).json["servers"])
    again = reseal(database_url, tmp_path, KEY_B, METAMCP_OLD_ENCRYPTION_KEY=b64(TEST_ENCRYPTION_KEY))
    assert again.returncode == 0, again.stderr
    assert "resealed 0 secret(s) of 0 server(s)" in again.stdout

    with db.transaction() as cur:
        cur.execute("SELECT actor, server FROM audit_log WHERE action = 'server.reseal' ORDER BY server")
        audited = [(row["actor"], row["server"]) for row in cur.fetchall()]
    assert audited == [("cli", "ctx"), ("cli", "local")]


def test_reseal_with_a_wrong_old_key_changes_nothing(
        app: Flask, api_key: str, settings: Settings, db: Database, database_url: str,
        tmp_path: Path) -> None:
    headers = {"X-API-Key": api_key}
    register(app.test_client(), headers, "http://127.0.0.1:9/mcp")
    # A third server sealed under yet another key: the old key given (A) moves the first two
    # inside the transaction, then this one opens with neither key, so nothing may change.
    stray = app_with(settings, bytes([9] * 32))
    try:
        made = stray.test_client().post("/api/v1/mcp/servers", headers=headers, json={
            "name": "zzz", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp",
            "bearer_token": "sealed-under-a-third-key"})
        assert made.status_code == 201, made.json
    finally:
        stray.extensions["metamcp"].close()
    before = stored(db)
    failed = reseal(database_url, tmp_path, KEY_B, "--old-key", b64(TEST_ENCRYPTION_KEY))
    assert failed.returncode == 1
    assert "'zzz'" in failed.stderr and "nothing was changed" in failed.stderr
    assert "sealed-under" not in failed.stderr + failed.stdout
    assert stored(db) == before
    with db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'server.reseal'")
        assert cur.fetchone()["n"] == 0
    missing = reseal(database_url, tmp_path, KEY_B)
    assert missing.returncode == 1 and "--old-key-file" in missing.stderr
    malformed = reseal(database_url, tmp_path, KEY_B, "--old-key", "not-a-key")
    assert malformed.returncode == 1 and "the old key" in malformed.stderr
    assert stored(db) == before
