"""Roles of API keys over REST (Flask test client, real PostgreSQL): what POST/PATCH accept, what
a client key may not do, and JWTs that carry the role."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from metamcp import repository
from metamcp.db import Database

from .conftest import TEST_JWT_SECRET

METHODS = ("get", "post", "put", "patch", "delete")


def admin_routes(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(method, concrete path) of every operation the document protects with a credential;
    path parameters filled with syntactically valid values (the route must match)."""
    for template, item in spec["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None or not operation.get("security"):
                continue  # public: the token exchange and /health
            parameters = {p["name"]: p for p in item.get("parameters", []) + operation.get("parameters", [])
                          if p["in"] == "path"}

            def value(match: re.Match[str], parameters: dict[str, Any] = parameters) -> str:
                schema = parameters.get(match.group(1), {}).get("schema", {})
                if schema.get("type") == "integer":
                    return "999999"  # no such key: the walk must not delete the admin key it uses
                if schema.get("format") == "uuid":
                    return str(uuid.uuid4())
                return "some-name"

            yield method, re.sub(r"\{([^}]+)\}", value, template)


def public_routes(spec: dict[str, Any]) -> set[str]:
    return {f"{m} {path}" for path, item in spec["paths"].items() for m in METHODS
            if m in item and not item[m].get("security")}


@pytest.fixture
def keys(client: FlaskClient, api_key: str, db: Database) -> dict[str, str]:
    """An admin key, an unscoped client key and a client key limited to a namespace."""
    with db.transaction() as cur:
        repository.insert_namespace(cur, "research", "")
    auth = {"X-API-Key": api_key}
    made = {"admin": api_key}
    for name, body in (("client", {"role": "client"}), ("scoped", {"role": "client", "namespaces": ["research"]})):
        reply = client.post("/api/v1/keys", headers=auth, json={"name": name, **body})
        assert reply.status_code == 201, reply.json
        made[name] = reply.json["key"]
    return made


def test_a_client_key_gets_403_on_every_admin_route(client: FlaskClient, keys: dict[str, str]) -> None:
    spec = client.get("/openapi.json").json
    routes = list(admin_routes(spec))
    assert len(routes) >= 25  # servers, live tools/execute/logs, import/export, namespaces, endpoints, keys
    assert public_routes(spec) <= {"post /api/v1/auth/token", "get /health", "get /ready"}
    token = client.post("/api/v1/auth/token", json={"api_key": keys["client"]}).json["access_token"]
    credentials = [{"X-API-Key": keys["client"]}, {"X-API-Key": keys["scoped"]},
                   {"Authorization": f"Bearer {token}"}]
    for method, path in routes:
        for headers in credentials:
            body = {"json": {}} if method in ("post", "put", "patch") else {}
            reply = getattr(client, method)(path, headers=headers, **body)
            assert reply.status_code == 403, (method, path, reply.status_code, reply.json)
            assert reply.json["error"] == "forbidden" and "admin key" in reply.json["message"]
        # The same request with an admin key gets past the role check (the route is real).
        reply = getattr(client, method)(path, headers={"X-API-Key": keys["admin"]},
                                        **({"json": {}} if method in ("post", "put", "patch") else {}))
        assert reply.status_code not in (401, 403, 405), (method, path, reply.status_code)
    for method, path in ((m, p) for p, item in spec["paths"].items() for m in METHODS if m in item
                         if item[m].get("security")):
        assert "admin key" in spec["paths"][path][method]["responses"]["403"]["description"], (method, path)


def test_a_client_key_cannot_create_a_stdio_server(client: FlaskClient, keys: dict[str, str]) -> None:
    body = {"name": "pwn", "transport": "stdio", "command": "/bin/sh", "args": ["-c", "id"]}
    reply = client.post("/api/v1/mcp/servers", headers={"X-API-Key": keys["client"]}, json=body)
    assert reply.status_code == 403 and reply.json["details"] == {"role": "client"}
    assert client.get("/api/v1/mcp/servers", headers={"X-API-Key": keys["admin"]}).json["servers"] == []


def test_post_requires_a_role_and_checks_it(client: FlaskClient, keys: dict[str, str]) -> None:
    auth = {"X-API-Key": keys["admin"]}
    reply = client.post("/api/v1/keys", headers=auth, json={"name": "x"})
    assert reply.status_code == 422 and "role" in reply.json["details"], reply.json
    for bad in ({"role": "root"}, {"role": "admin", "namespaces": ["research"]}, {"role": "client", "rate_limit": 0},
                {"role": "client", "rate_limit": "many"}):
        reply = client.post("/api/v1/keys", headers=auth, json={"name": "x", **bad})
        assert reply.status_code == 422, (bad, reply.json)
    reply = client.post("/api/v1/keys", headers=auth, json={"name": "bot", "role": "client", "rate_limit": 120})
    assert reply.status_code == 201 and reply.json["rate_limit"] == 120 and reply.json["role"] == "client"
    shown = client.get(f"/api/v1/keys/{reply.json['id']}", headers=auth).json
    assert (shown["role"], shown["rate_limit"], shown["scoped"]) == ("client", 120, False)
    listed = {k["name"]: (k["role"], k["rate_limit"]) for k in client.get("/api/v1/keys", headers=auth).json["keys"]}
    assert listed == {"test": ("admin", None), "client": ("client", None), "scoped": ("client", None),
                      "bot": ("client", 120)}


def test_patch_changes_role_scope_and_rate(client: FlaskClient, make_key: Callable[..., tuple[int, str]],
                                           keys: dict[str, str]) -> None:
    auth = {"X-API-Key": keys["admin"]}
    key_id, _ = make_key("other-admin")

    def patch(body: dict[str, Any]) -> Any:
        return client.patch(f"/api/v1/keys/{key_id}", headers=auth, json=body)

    reply = patch({"role": "client", "rate_limit": 30})
    assert (reply.json["role"], reply.json["scoped"], reply.json["rate_limit"]) == ("client", False, 30)
    reply = patch({"role": "admin", "namespaces": ["research"]})
    assert reply.status_code == 422 and "namespaces" in reply.json["details"]
    reply = patch({"namespaces": ["research"]})
    assert (reply.json["role"], reply.json["namespaces"]) == ("client", ["research"])
    reply = patch({"role": "admin"})  # an admin key reaches everything: the limit goes
    assert (reply.json["role"], reply.json["scoped"], reply.json["rate_limit"]) == ("admin", False, 30)
    reply = patch({"namespaces": ["research"]})  # limiting an admin key makes it a client key
    assert (reply.json["role"], reply.json["scoped"]) == ("client", True)
    reply = patch({"rate_limit": None})
    assert reply.json["rate_limit"] is None and reply.json["namespaces"] == ["research"]
    assert patch({"rate_limit": -1}).status_code == 422
    assert patch({"role": "superuser"}).status_code == 422


def test_jwts_carry_the_role_and_a_stale_one_is_refused(app: Flask, client: FlaskClient,
                                                        keys: dict[str, str]) -> None:
    auth = {"X-API-Key": keys["admin"]}
    client_id = next(k["id"] for k in client.get("/api/v1/keys", headers=auth).json["keys"] if k["name"] == "client")
    token = client.post("/api/v1/auth/token", json={"api_key": keys["client"]}).json["access_token"]
    assert jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"])["role"] == "client"
    admin_token = client.post("/api/v1/auth/token", json={"api_key": keys["admin"]}).json["access_token"]
    assert jwt.decode(admin_token, TEST_JWT_SECRET, algorithms=["HS256"])["role"] == "admin"
    assert client.get("/api/v1/keys", headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
    authenticator = app.extensions["metamcp"].authenticator
    principal = authenticator.authenticate(token)
    assert (principal.role, principal.is_admin, principal.rate_limit) == ("client", False, None)
    # Promote the client key: its old token states the old role and stops working.
    assert client.patch(f"/api/v1/keys/{client_id}", headers=auth, json={"role": "admin", "rate_limit": 5}).status_code == 200
    authenticator.invalidate()  # what NOTIFY does in every process
    reply = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 401 and "role" in reply.json["message"]
    fresh = client.post("/api/v1/auth/token", json={"api_key": keys["client"]}).json["access_token"]
    assert client.get("/api/v1/keys", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    principal = authenticator.authenticate(fresh)
    assert (principal.is_admin, principal.rate_limit) == (True, 5)
    # Demote it again: the admin token is refused at once, on the admin API and everywhere else.
    assert client.patch(f"/api/v1/keys/{client_id}", headers=auth, json={"role": "client"}).status_code == 200
    authenticator.invalidate()
    assert client.get("/api/v1/keys", headers={"Authorization": f"Bearer {fresh}"}).status_code == 401
