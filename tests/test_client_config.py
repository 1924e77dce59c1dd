"""Import/export of the mcpServers config format: REST and scripts/servers.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from metamcp.db import Database

from .conftest import ROOT, child_env

CLAUDE_DESKTOP = {
    "mcpServers": {
        "filesystem": {
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-filesystem", "/Users/me/Desktop"],
        },
        "github": {
            "command": "docker",
            "args": ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN", "ghcr.io/github/github-mcp-server"],
            "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_secret_token_value_1234"},
        },
        "remote": {"type": "http", "url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer remote-secret-token-5678", "X-Team": "core"}},
        "legacy": {"type": "sse", "url": "http://127.0.0.1:3001/sse", "disabled": True},
    }
}


def post_import(client: FlaskClient, key: str, body: Any, partial: bool = False) -> Any:
    url = "/api/v1/mcp/servers/import" + ("?partial=true" if partial else "")
    return client.post(url, json=body, headers={"X-API-Key": key})


def test_import_a_claude_desktop_config(client: FlaskClient, api_key: str, app: Flask) -> None:
    response = post_import(client, api_key, CLAUDE_DESKTOP)
    assert response.status_code == 200, response.json
    assert sorted(response.json["created"]) == ["filesystem", "github", "legacy", "remote"]
    assert response.json["updated"] == [] and response.json["skipped"] == []
    servers = {s["name"]: s for s in client.get("/api/v1/mcp/servers", headers={"X-API-Key": api_key}).json["servers"]}
    assert servers["filesystem"]["transport"] == "stdio" and servers["filesystem"]["command"] == "npx"
    assert servers["github"]["env"] == {"GITHUB_PERSONAL_ACCESS_TOKEN": "****1234"}
    assert servers["remote"]["transport"] == "streamable_http"
    assert servers["remote"]["bearer_token"] == "****5678" and servers["remote"]["headers"] == {"X-Team": "****"}
    assert servers["legacy"]["transport"] == "sse" and servers["legacy"]["is_active"] is False
    configs = {c.name: c for c in app.extensions["metamcp"].servers.configs(active_only=False)}
    assert configs["remote"].bearer_token == "remote-secret-token-5678"


def test_invalid_entries_reject_everything_unless_partial(client: FlaskClient, api_key: str) -> None:
    document = {"mcpServers": {
        "good": {"command": "uvx", "args": ["mcp-server-git"]},
        "bad name": {"command": "x"},
        "nothing": {"args": []},
        "both": {"command": "x", "url": "http://127.0.0.1/mcp"},
        "weird": {"url": "ftp://host/x"},
    }}
    rejected = post_import(client, api_key, document)
    assert rejected.status_code == 422
    assert set(rejected.json["details"]) == {"bad name", "nothing", "both", "weird"}
    assert "command" in rejected.json["details"]["nothing"]
    assert client.get("/api/v1/mcp/servers", headers={"X-API-Key": api_key}).json["servers"] == []
    partial = post_import(client, api_key, document, partial=True)
    assert partial.status_code == 200
    assert partial.json["created"] == ["good"]
    assert {s["name"] for s in partial.json["skipped"]} == {"bad name", "nothing", "both", "weird"}
    assert post_import(client, api_key, {"servers": {}}).status_code == 422
    assert post_import(client, api_key, {"mcpServers": []}).status_code == 422


def test_existing_servers_are_updated(client: FlaskClient, api_key: str) -> None:
    post_import(client, api_key, CLAUDE_DESKTOP)
    changed = {"mcpServers": {"filesystem": {"command": "npx", "args": ["-y", "other"]}}}
    response = post_import(client, api_key, changed)
    assert response.json["updated"] == ["filesystem"] and response.json["created"] == []
    servers = {s["name"]: s for s in client.get("/api/v1/mcp/servers", headers={"X-API-Key": api_key}).json["servers"]}
    assert servers["filesystem"]["args"] == ["-y", "other"]


def test_export_masks_secrets_and_round_trips(client: FlaskClient, api_key: str, app: Flask) -> None:
    post_import(client, api_key, CLAUDE_DESKTOP)
    headers = {"X-API-Key": api_key}
    masked = client.get("/api/v1/mcp/servers/export", headers=headers).json
    assert masked["mcpServers"]["github"]["env"] == {"GITHUB_PERSONAL_ACCESS_TOKEN": "****1234"}
    assert masked["mcpServers"]["remote"]["headers"]["Authorization"] == "Bearer ****5678"
    assert masked["mcpServers"]["legacy"]["disabled"] is True
    assert "ghp_secret" not in json.dumps(masked)
    clear = client.get("/api/v1/mcp/servers/export?include_secrets=true", headers=headers).json
    assert clear == CLAUDE_DESKTOP
    # Importing the masked export back changes nothing: masked values keep the stored secrets.
    reimported = post_import(client, api_key, masked).json
    assert sorted(reimported["updated"]) == sorted(CLAUDE_DESKTOP["mcpServers"])
    configs = {c.name: c for c in app.extensions["metamcp"].servers.configs(active_only=False)}
    assert configs["github"].env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_secret_token_value_1234"}
    assert configs["remote"].bearer_token == "remote-secret-token-5678"


def test_servers_script(database_url: str, db: Database, tmp_path: Path) -> None:
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path))
    config_file = tmp_path / "claude_desktop_config.json"
    config_file.write_text(json.dumps(CLAUDE_DESKTOP))
    script = [sys.executable, str(ROOT / "scripts" / "servers.py")]
    imported = subprocess.run([*script, "import", str(config_file)], env=env, capture_output=True,
                              text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert sorted(json.loads(imported.stdout)["created"]) == sorted(CLAUDE_DESKTOP["mcpServers"])
    exported = subprocess.run([*script, "export"], env=env, capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0 and "ghp_secret" not in exported.stdout
    assert set(json.loads(exported.stdout)["mcpServers"]) == set(CLAUDE_DESKTOP["mcpServers"])
    secret = subprocess.run([*script, "export", "--include-secrets"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert json.loads(secret.stdout) == CLAUDE_DESKTOP
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x y": {"command": "a"}}}')
    failed = subprocess.run([*script, "import", str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "nothing was imported" in failed.stderr
    assert "with --partial" in failed.stderr and "partial=true" not in failed.stderr
    missing = subprocess.run([*script, "import", str(tmp_path / "none.json")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    usage = subprocess.run([*script, "frobnicate"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2
