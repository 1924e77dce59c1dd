"""Token exchange and authentication of /api/v1 routes (Flask test client, real database)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
from flask import Flask
from flask.testing import FlaskClient

from metamcp import crypto, repository
from metamcp.app import create_app
from metamcp.config import Settings
from metamcp.db import Database
from metamcp.notify import Topic

from .conftest import TEST_JWT_SECRET, TransactionCounter


def token_for(client: FlaskClient, key: str) -> str:
    response = client.post("/api/v1/auth/token", json={"api_key": key})
    assert response.status_code == 200, response.json
    return response.json["access_token"]


def test_token_exchange(client: FlaskClient, make_key: Callable[..., tuple[int, str]], db: Database) -> None:
    key_id, key = make_key()
    response = client.post("/api/v1/auth/token", json={"api_key": key})
    assert response.status_code == 200
    body = response.json
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    claims = jwt.decode(body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(key_id) and claims["exp"] - claims["iat"] == 900
    with db.transaction() as cur:
        assert repository.get_key(cur, key_id)["last_used_at"] is not None


def test_unknown_or_inactive_key_gets_401(client: FlaskClient, make_key: Callable[..., tuple[int, str]],
                                          db: Database) -> None:
    for bad in ["mcp_" + "A" * 43, "not-a-key"]:
        response = client.post("/api/v1/auth/token", json={"api_key": bad})
        assert response.status_code == 401
        assert response.json["error"] == "unauthorized"
    key_id, key = make_key()
    with db.transaction() as cur:
        repository.set_key_active(cur, key_id, False)
    response = client.post("/api/v1/auth/token", json={"api_key": key})
    assert response.status_code == 401


def test_token_request_validation(client: FlaskClient) -> None:
    assert client.post("/api/v1/auth/token", json={}).status_code == 422
    assert client.post("/api/v1/auth/token", json={"api_key": 5}).status_code == 422
    response = client.post("/api/v1/auth/token", data="{", content_type="application/json")
    assert response.status_code == 400 and response.json["error"] == "bad_request"


def test_protected_routes_take_jwt_raw_key_or_x_api_key(client: FlaskClient, api_key: str) -> None:
    assert client.get("/api/v1/mcp/servers").status_code == 401
    token = token_for(client, api_key)
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {api_key}"},
        {"Authorization": f"bearer {api_key}"},
        {"X-API-Key": api_key},
    ):
        response = client.get("/api/v1/mcp/servers", headers=headers)
        assert response.status_code == 200, headers
        assert response.json == {"servers": []}


def test_bad_credentials_get_json_401(client: FlaskClient) -> None:
    expired = crypto.issue_jwt(1, TEST_JWT_SECRET, 60, now=time.time() - 3600, role="admin")
    for headers in (
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "mcp_unknown"},
    ):
        response = client.get("/api/v1/mcp/servers", headers=headers)
        assert response.status_code == 401, headers
        assert response.json["error"] == "unauthorized" and response.json["message"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_jwt_of_deleted_key_is_refused(app: Flask, client: FlaskClient,
                                       make_key: Callable[..., tuple[int, str]], db: Database) -> None:
    key_id, key = make_key()
    token = token_for(client, key)
    with db.transaction() as cur:
        repository.delete_key(cur, key_id)
    app.extensions["metamcp"].authenticator.invalidate()  # what the notification does
    assert client.get("/api/v1/mcp/servers", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_warm_authentication_makes_no_database_query(app: Flask, client: FlaskClient, api_key: str) -> None:
    token = token_for(client, api_key)
    auth = app.extensions["metamcp"].authenticator
    database = app.extensions["metamcp"].db
    auth.authenticate(token)
    auth.authenticate(api_key)
    transactions = TransactionCounter(database)
    for _ in range(100):
        assert auth.authenticate(token).key_id == auth.authenticate(api_key).key_id
    assert transactions.count == 0


def test_inactivation_locks_out_jwts_within_a_second(settings: Settings, db: Database,
                                                     make_key: Callable[..., tuple[int, str]]) -> None:
    """A second process inactivates the key; LISTEN/NOTIFY clears this process's cache."""
    app = create_app(settings, listen=True)
    services = app.extensions["metamcp"]
    try:
        assert services.listener.listening.wait(10)
        client = app.test_client()
        key_id, key = make_key()
        headers = {"Authorization": f"Bearer {token_for(client, key)}"}
        assert client.get("/api/v1/mcp/servers", headers=headers).status_code == 200
        with db.transaction() as cur:  # another connection, as scripts/keys.py would
            repository.set_key_active(cur, key_id, False)
            repository.notify_change(cur, Topic.KEYS)
        start = time.monotonic()
        status = 200
        while status == 200 and time.monotonic() - start < 5:
            status = client.get("/api/v1/mcp/servers", headers=headers).status_code
            time.sleep(0.01)
        assert status == 401
        assert time.monotonic() - start < 1.0
    finally:
        services.close()
