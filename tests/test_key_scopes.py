"""API keys limited to namespaces: the REST keys API, the Authenticator and scripts/keys.py."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest
from flask import Flask
from flask.testing import FlaskClient

from metamcp import repository
from metamcp.db import Database

from .conftest import child_env, run_keys


@pytest.fixture
def namespaces(db: Database) -> dict[str, str]:
    with db.transaction() as cur:
        return {name: str(repository.insert_namespace(cur, name, "")["id"]) for name in ("research", "ops")}


def test_keys_rest_api(client: FlaskClient, api_key: str, namespaces: dict[str, str]) -> None:
    auth = {"X-API-Key": api_key}
    reply = client.post("/api/v1/keys", headers=auth, json={"name": "bot", "role": "client",
                                                                 "namespaces": ["research", namespaces["ops"]]})
    assert reply.status_code == 201, reply.json
    created = reply.json
    assert created["key"].startswith("mcp_") and created["scoped"] is True and created["role"] == "client"
    assert created["namespaces"] == ["ops", "research"] and "key_hash" not in created
    shown = client.get(f"/api/v1/keys/{created['id']}", headers=auth).json
    assert "key" not in shown and shown["namespaces"] == ["ops", "research"]
    listed = client.get("/api/v1/keys", headers=auth).json["keys"]
    assert [(k["role"], k["scoped"]) for k in listed] == [("admin", False), ("client", True)]
    reply = client.post("/api/v1/keys", headers=auth, json={"name": "x", "role": "client", "namespaces": ["nope"]})
    assert reply.status_code == 422 and reply.json["details"] == {"namespaces": ["nope"]}
    assert client.post("/api/v1/keys", headers=auth, json={"name": "", "role": "client"}).status_code == 422
    reply = client.patch(f"/api/v1/keys/{created['id']}", headers=auth, json={"namespaces": None, "name": "b2"})
    assert reply.json["scoped"] is False and reply.json["name"] == "b2" and reply.json["namespaces"] == []
    assert reply.json["role"] == "client"  # lifting the limit does not make it an admin key
    reply = client.patch(f"/api/v1/keys/{created['id']}", headers=auth, json={"is_active": False})
    assert reply.json["is_active"] is False
    assert client.get("/api/v1/keys", headers=auth).json["keys"][-1]["id"] != created["id"]
    assert client.get("/api/v1/keys?include_inactive=true", headers=auth).json["keys"][-1]["id"] == created["id"]
    assert client.delete(f"/api/v1/keys/{created['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/keys/{created['id']}", headers=auth).status_code == 404
    assert client.patch("/api/v1/keys/999", headers=auth, json={"is_active": False}).status_code == 404


def test_a_scoped_key_is_refused_by_the_admin_api(
        client: FlaskClient, api_key: str, namespaces: dict[str, str]) -> None:
    scoped = client.post("/api/v1/keys", headers={"X-API-Key": api_key},
                         json={"name": "bot", "role": "client", "namespaces": ["research"]}).json["key"]
    token = client.post("/api/v1/auth/token", json={"api_key": scoped}).json["access_token"]
    for headers in ({"X-API-Key": scoped}, {"Authorization": f"Bearer {token}"}):
        for path in ("/api/v1/mcp/servers", "/api/v1/keys", "/api/v1/namespaces", "/api/v1/endpoints"):
            reply = client.get(path, headers=headers)
            assert reply.status_code == 403 and reply.json["error"] == "forbidden", path
    assert client.get("/api/v1/mcp/servers", headers={"X-API-Key": api_key}).status_code == 200


def test_principal_scope_and_deleting_its_namespace_narrows_it(
        app: Flask, client: FlaskClient, api_key: str, namespaces: dict[str, str]) -> None:
    auth = {"X-API-Key": api_key}
    scoped = client.post("/api/v1/keys", headers=auth,
                         json={"name": "bot", "role": "client", "namespaces": ["research"]}).json["key"]
    authenticator = app.extensions["metamcp"].authenticator
    principal = authenticator.authenticate(scoped)
    assert principal.is_scoped and principal.namespaces == frozenset({UUID(namespaces["research"])})
    assert principal.may_reach(UUID(namespaces["research"])) and not principal.may_reach(UUID(namespaces["ops"]))
    assert not authenticator.authenticate(api_key).is_scoped
    assert client.delete(f"/api/v1/namespaces/{namespaces['research']}", headers=auth).status_code == 204
    authenticator.invalidate()  # what the NOTIFY does in every process
    principal = authenticator.authenticate(scoped)
    assert principal.is_scoped and principal.namespaces == frozenset()  # reaches nothing, not everything
    assert not principal.may_reach(UUID(namespaces["ops"]))


@pytest.fixture
def env(database_url: str, db: Database, tmp_path: Path) -> dict[str, str]:
    return child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path))


def test_keys_cli_scopes(env: dict[str, str], namespaces: dict[str, str]) -> None:
    result = run_keys(env, "create", "--name", "bot", "--namespace", "research", "--namespace", namespaces["ops"])
    assert result.returncode == 0, result.stderr
    assert "NAMESPACES" in result.stdout and "ops,research" in result.stdout
    created = json.loads(run_keys(env, "show", "1", "--json").stdout)
    assert created["scoped"] is True and created["namespaces"] == ["ops", "research"]
    assert created["role"] == "client"  # --namespace without --role makes a client key
    result = run_keys(env, "scope", "1", "--unscoped", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["scoped"] is False
    assert json.loads(result.stdout)["role"] == "client"
    assert run_keys(env, "list").stdout.splitlines()[1].split()[-2:] == ["*", "default"]
    result = run_keys(env, "scope", "1", "--namespace", "ops", "--json")
    assert json.loads(result.stdout)["namespaces"] == ["ops"]
    rotated = json.loads(run_keys(env, "rotate", "1", "--json").stdout)
    assert rotated["scoped"] is True and rotated["namespaces"] == ["ops"]  # the replacement keeps the scope
    assert rotated["role"] == "client"
    unknown = run_keys(env, "create", "--name", "x", "--namespace", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr and unknown.stdout == ""
    assert run_keys(env, "scope", "1").returncode == 2
    assert run_keys(env, "scope", "1", "--unscoped", "--namespace", "ops").returncode == 2
    assert run_keys(env, "scope", "99", "--unscoped").returncode == 1
