"""The stdio policy: METAMCP_STDIO=off and the METAMCP_STDIO_COMMANDS allow-list, as a unit and
through the app (registration over REST and import, start of an already registered server)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from metamcp.app import create_app
from metamcp.config import Settings
from metamcp.crypto import SecretBox
from metamcp.db import Database
from metamcp.servers import ServerRegistry
from metamcp.stdio_policy import StdioPolicy, StdioRefused, resolve

from .conftest import TEST_ENCRYPTION_KEY
from .upstreams import SERVER

PYTHON = sys.executable
SH = resolve("sh", "/", os.environ.get("PATH"))


def refused(policy: StdioPolicy, command: str, cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(StdioRefused) as caught:
        policy.executable(command, cwd, env or {})
    assert caught.value.status == 422
    return caught.value.message


def test_off_refuses_every_command_and_names_the_setting() -> None:
    policy = StdioPolicy(enabled=False)
    for command in (PYTHON, "sh", "/bin/true"):
        assert "METAMCP_STDIO=off" in refused(policy, command)


def test_without_an_allow_list_the_start_resolves_the_command_as_before() -> None:
    assert StdioPolicy().executable("anything-at-all", None, {}) is None


def test_allow_list_admits_sys_executable_by_path_and_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    by_path = StdioPolicy(commands=(PYTHON,))
    assert by_path.executable(PYTHON, None, {}) == PYTHON
    # The same file reached through `..` or relative to the server's cwd is the same program.
    directory, name = os.path.split(PYTHON)
    assert by_path.executable(f"{directory}/../{os.path.basename(directory)}/{name}", None, {})
    assert by_path.executable(f"./{name}", directory, {}) == os.path.join(directory, f"./{name}")
    # A bare name in the list is looked up on the PATH children inherit from the gateway.
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    by_name = StdioPolicy(commands=(name,))
    on_path = {"PATH": directory}
    assert by_name.executable(name, None, on_path) == os.path.join(directory, name)


@pytest.mark.skipif(SH is None, reason="no sh on PATH")
def test_allow_list_refuses_others_however_they_are_spelled(tmp_path: Path) -> None:
    assert SH is not None
    policy = StdioPolicy(commands=(PYTHON,))
    sh_dir, sh_name = os.path.split(SH)
    for command, cwd in ((SH, None), (sh_name, None), (f"./{sh_name}", sh_dir),
                         (f"{sh_dir}/../{os.path.basename(sh_dir)}/{sh_name}", None), ("/bin/true", None)):
        assert "METAMCP_STDIO_COMMANDS" in refused(policy, command, cwd, {"PATH": os.environ.get("PATH", "")})
    # A PATH set in the server's env that puts another file under an allowed name first.
    fake = tmp_path / os.path.basename(PYTHON)
    fake.write_text("#!/bin/sh\nid\n")
    fake.chmod(0o755)
    by_name = StdioPolicy(commands=(os.path.basename(PYTHON),))
    message = refused(by_name, os.path.basename(PYTHON), None, {"PATH": str(tmp_path)})
    assert str(fake) in message and "METAMCP_STDIO_COMMANDS" in message
    # A relative PATH entry means the child's cwd, as the start would run it.
    message = refused(by_name, os.path.basename(PYTHON), str(tmp_path), {"PATH": "."})
    assert str(fake) in message
    assert "cannot be found" in refused(policy, "no-such-command-metamcp", None, {"PATH": str(tmp_path)})
    # Nor can the loader be told to run other code inside an allowed program.
    assert "LD_PRELOAD" in refused(policy, PYTHON, None, {"LD_PRELOAD": str(fake)})
    assert StdioPolicy().executable(PYTHON, None, {"LD_LIBRARY_PATH": "/opt/lib"}) is None  # no list: as before


def stdio_server(name: str, command: str = PYTHON, **extra: Any) -> dict[str, Any]:
    return {"name": name, "transport": "stdio", "command": command,
            "args": [str(SERVER), "--transport", "stdio", "--name", name], **extra}


@pytest.fixture
def make_app(settings: Settings, db: Database) -> Iterator[Any]:
    apps: list[Flask] = []

    def make(**changes: Any) -> FlaskClient:
        application = create_app(replace(settings, **changes), listen=False)
        apps.append(application)
        return application.test_client()

    yield make
    for application in apps:
        application.extensions["metamcp"].close()


def test_stdio_off_refuses_registration_everywhere(make_app: Any, api_key: str, db: Database) -> None:
    client = make_app(stdio_enabled=False)
    auth = {"X-API-Key": api_key}
    reply = client.post("/api/v1/mcp/servers", headers=auth, json=stdio_server("kid"))
    assert reply.status_code == 422 and "METAMCP_STDIO=off" in reply.json["message"], reply.json
    assert reply.json["error"] == "stdio_refused"
    http = client.post("/api/v1/mcp/servers", headers=auth,
                       json={"name": "web", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"})
    assert http.status_code == 201
    for method in ("put", "patch"):
        reply = getattr(client, method)(f"/api/v1/mcp/servers/{http.json['id']}", headers=auth,
                                        json=stdio_server("web"))
        assert reply.status_code == 422 and "METAMCP_STDIO=off" in reply.json["message"], method
    document = {"mcpServers": {"kid": {"command": PYTHON, "args": []},
                               "web2": {"url": "http://127.0.0.1:9/mcp"}}}
    reply = client.post("/api/v1/mcp/servers/import", headers=auth, json=document)
    assert reply.status_code == 422 and "METAMCP_STDIO=off" in reply.json["details"]["kid"], reply.json
    reply = client.post("/api/v1/mcp/servers/import?partial=true", headers=auth, json=document)
    assert reply.status_code == 200 and reply.json["created"] == ["web2"]
    assert "METAMCP_STDIO=off" in reply.json["skipped"][0]["reason"]
    names = [s["name"] for s in client.get("/api/v1/mcp/servers", headers=auth).json["servers"]]
    assert sorted(names) == ["web", "web2"]


def test_stdio_off_refuses_to_start_a_registered_server_but_lets_it_be_switched_off(
        make_app: Any, api_key: str, db: Database, tmp_path: Path) -> None:
    # Registered while stdio was allowed; the child would leave a file behind if it ever ran.
    ran = tmp_path / "ran"
    registered = ServerRegistry(db, SecretBox(TEST_ENCRYPTION_KEY)).create(
        stdio_server("kid", args=["-c", f"open({str(ran)!r}, 'w')"]))
    client = make_app(stdio_enabled=False)
    auth = {"X-API-Key": api_key}
    reply = client.get(f"/api/v1/mcp/servers/{registered['id']}/tools", headers=auth)
    assert reply.status_code == 502 and "METAMCP_STDIO=off" in reply.json["message"], reply.json
    assert not ran.exists()  # no child was spawned
    reply = client.patch(f"/api/v1/mcp/servers/{registered['id']}", headers=auth, json={"is_active": False})
    assert reply.status_code == 200 and reply.json["is_active"] is False
    reply = client.patch(f"/api/v1/mcp/servers/{registered['id']}", headers=auth, json={"is_active": True})
    assert reply.status_code == 422


def test_allow_list_through_the_app(make_app: Any, api_key: str, db: Database) -> None:
    client = make_app(stdio_commands=(PYTHON,))
    auth = {"X-API-Key": api_key}
    reply = client.post("/api/v1/mcp/servers", headers=auth, json=stdio_server("kid"))
    assert reply.status_code == 201, reply.json
    tools = client.get(f"/api/v1/mcp/servers/{reply.json['id']}/tools", headers=auth)
    assert tools.status_code == 200 and "echo" in [t["name"] for t in tools.json["tools"]]
    reply = client.post("/api/v1/mcp/servers", headers=auth, json=stdio_server("shell", "/bin/sh", args=["-c", "id"]))
    assert reply.status_code == 422 and "METAMCP_STDIO_COMMANDS" in reply.json["message"]
    sneaky = ServerRegistry(db, SecretBox(TEST_ENCRYPTION_KEY)).create(
        stdio_server("sneaky", "/bin/sh", args=["-c", "id"]))
    reply = client.get(f"/api/v1/mcp/servers/{sneaky['id']}/tools", headers=auth)
    assert reply.status_code == 502 and "METAMCP_STDIO_COMMANDS" in reply.json["message"], reply.json
