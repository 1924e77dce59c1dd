"""The server registry REST API through Flask's test client, on a real database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from metamcp.db import Database

HTTP_SERVER = {"name": "one", "transport": "streamable_http", "url": "http://127.0.0.1:3001/mcp"}
STDIO_SERVER = {
    "name": "files",
    "transport": "stdio",
    "command": "npx",
    "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"],
    "env": {"API_TOKEN": "env-secret-value-123456"},
    "cwd": "/tmp",
}


class Api:
    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client = client
        self.headers = {"X-API-Key": key}

    def __getattr__(self, method: str) -> Any:
        def call(path: str, **kwargs: Any) -> Any:
            return getattr(self.client, method)(
                "/api/v1/mcp/servers" + path, headers=self.headers, **kwargs
            )

        return call


@pytest.fixture
def api(client: FlaskClient, api_key: str) -> Api:
    return Api(client, api_key)


def test_create_list_get_delete(api: Api) -> None:
    created = api.post("", json={**HTTP_SERVER, "description": "first"})
    assert created.status_code == 201
    server = created.json
    assert uuid.UUID(server["id"])
    assert server["name"] == "one" and server["description"] == "first"
    assert server["is_active"] is True and server["created_at"] and server["updated_at"]
    assert api.get("").json == {"servers": [server]}
    assert api.get(f"/{server['id']}").json == server
    deleted = api.delete(f"/{server['id']}")
    assert deleted.status_code == 204 and deleted.data == b""
    assert api.get(f"/{server['id']}").status_code == 404
    assert api.delete(f"/{server['id']}").status_code == 404


def test_rust_port_protocol_alias(api: Api) -> None:
    response = api.post("", json={"name": "rusty", "protocol": "http", "url": "http://127.0.0.1:1/mcp"})
    assert response.status_code == 201
    assert response.json["transport"] == "streamable_http"


def test_secrets_are_masked_and_encrypted_at_rest(api: Api, db: Database) -> None:
    body = {**HTTP_SERVER, "bearer_token": "upstream-bearer-token-9876",
            "headers": {"X-Upstream-Key": "header-secret-value-5555", "X-Short": "abc"}}
    server = api.post("", json=body).json
    assert server["bearer_token"] == "****9876"
    assert server["headers"] == {"X-Upstream-Key": "****5555", "X-Short": "****"}
    stdio = api.post("", json=STDIO_SERVER).json
    assert stdio["env"] == {"API_TOKEN": "****3456"}
    with db.transaction() as cur:
        cur.execute("SELECT headers::text, env::text, bearer_token FROM mcp_servers")
        raw = " ".join(str(v) for row in cur.fetchall() for v in row.values())
    for secret in ("upstream-bearer-token-9876", "header-secret-value-5555", "env-secret-value-123456"):
        assert secret not in raw
    assert raw.count("v1:") == 4


def test_masked_secret_sent_back_keeps_the_stored_one(api: Api, app: Any) -> None:
    server = api.post("", json={**HTTP_SERVER, "bearer_token": "upstream-bearer-token-9876",
                                "headers": {"X-K": "header-secret-value-5555"}}).json
    editable = {k: server[k] for k in ("name", "transport", "url", "headers", "bearer_token")}
    assert api.put(f"/{server['id']}", json={**editable, "description": "edited"}).status_code == 200
    config = app.extensions["metamcp"].servers.configs()[0]
    assert config.bearer_token == "upstream-bearer-token-9876"
    assert config.headers == {"X-K": "header-secret-value-5555"}
    api.patch(f"/{server['id']}", json={"headers": {"X-K": "new-secret-value-0000"}, "bearer_token": None})
    config = app.extensions["metamcp"].servers.configs()[0]
    assert config.headers == {"X-K": "new-secret-value-0000"} and config.bearer_token is None


def test_put_replaces_and_patch_merges(api: Api) -> None:
    server = api.post("", json={**HTTP_SERVER, "description": "d", "headers": {"X-A": "1"}}).json
    patched = api.patch(f"/{server['id']}", json={"is_active": False})
    assert patched.status_code == 200
    assert patched.json["is_active"] is False and patched.json["description"] == "d"
    assert patched.json["headers"] == {"X-A": "****"}
    replaced = api.put(f"/{server['id']}", json={"name": "renamed", "transport": "sse",
                                                 "url": "http://127.0.0.1:2/sse"})
    assert replaced.status_code == 200
    assert replaced.json["name"] == "renamed" and replaced.json["description"] == ""
    assert replaced.json["headers"] == {} and replaced.json["is_active"] is True
    assert api.put(f"/{server['id']}", json={"is_active": True}).status_code == 422
    switched = api.patch(f"/{server['id']}", json={"transport": "stdio"})
    assert switched.status_code == 422 and "command" in switched.json["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HTTP_SERVER, "name": "a__b"}, "name"),
        ({**HTTP_SERVER, "name": "has space"}, "name"),
        ({**HTTP_SERVER, "name": "x" * 65}, "name"),
        ({**HTTP_SERVER, "name": ""}, "name"),
        ({**HTTP_SERVER, "transport": "carrier-pigeon"}, "transport"),
        ({"name": "nourl", "transport": "streamable_http"}, "url"),
        ({**HTTP_SERVER, "url": "ftp://example/mcp"}, "url"),
        ({**HTTP_SERVER, "url": "not a url"}, "url"),
        ({"name": "nocmd", "transport": "stdio"}, "command"),
        ({**HTTP_SERVER, "headers": {"Bad Header": "x"}}, "headers"),
        ({**HTTP_SERVER, "headers": {"X-A": "line\r\nInjected: 1"}}, "headers"),
        ({**HTTP_SERVER, "headers": {"Mcp-Session-Id": "x"}}, "headers"),
        ({**STDIO_SERVER, "env": {"1BAD": "x"}}, "env"),
        ({**STDIO_SERVER, "args": "not-a-list"}, "args"),
        ({**HTTP_SERVER, "is_active": "maybe"}, "is_active"),
        ({**HTTP_SERVER, "colour": "blue"}, "colour"),
    ],
)
def test_validation_errors_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.post("", json=body)
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_error"
    assert field in response.json["details"]
    assert api.get("").json == {"servers": []}


def test_duplicate_name_is_409_and_loses_nothing(api: Api) -> None:
    first = api.post("", json=HTTP_SERVER).json
    response = api.post("", json=HTTP_SERVER)
    assert response.status_code == 409 and response.json["error"] == "conflict"
    other = api.post("", json={**HTTP_SERVER, "name": "two"}).json
    assert api.patch(f"/{other['id']}", json={"name": "one"}).status_code == 409
    assert sorted(s["name"] for s in api.get("").json["servers"]) == ["one", "two"]
    assert api.get(f"/{first['id']}").json == first


def test_http_errors_are_json(api: Api, client: FlaskClient) -> None:
    cases = [
        (api.get("/not-a-uuid"), 404, "not_found"),
        (api.get(f"/{uuid.uuid4()}"), 404, "not_found"),
        (api.patch(f"/{uuid.uuid4()}", json={"is_active": False}), 404, "not_found"),
        (api.post("", data="{", content_type="application/json"), 400, "bad_request"),
        (api.post("", data="name=x", content_type="application/x-www-form-urlencoded"), 415,
         "unsupported_media_type"),
        (api.post("", data="x" * 70_000, content_type="application/json"), 413, "payload_too_large"),
        (api.post("", json=[1, 2]), 422, "validation_error"),
        (client.delete("/api/v1/mcp/servers", headers=api.headers), 405, "method_not_allowed"),
        (client.get("/nowhere"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (status, response.data[:200])
        assert response.is_json
        assert response.json["error"] == code and response.json["message"]
        assert set(response.json) == {"error", "message", "details"}
        assert b"Traceback" not in response.data


def test_secrets_under_another_encryption_key_fail_softly(api: Api, settings: Any, db: Database) -> None:
    """Regression: a changed ENCRYPTION_KEY once turned /health and the registry into 500s."""
    from dataclasses import replace

    from metamcp.app import create_app

    server = api.post("", json={**HTTP_SERVER, "bearer_token": "sealed-under-key-one-1234"}).json
    other = create_app(replace(settings, encryption_key=bytes([7] * 32)), listen=False)
    try:
        client = other.test_client()
        headers = api.headers
        health = client.get("/api/v1/health", headers=headers)
        assert health.status_code == 200
        assert [(u["name"], u["status"]) for u in health.json["upstreams"]] == [("one", "error")]
        shown = client.get(f"/api/v1/mcp/servers/{server['id']}", headers=headers)
        assert shown.status_code == 200 and shown.json["bearer_token"] == "****"
        live = client.get(f"/api/v1/mcp/servers/{server['id']}/tools", headers=headers)
        assert live.status_code == 409 and live.json["error"] == "undecryptable_secrets"
        assert "ENCRYPTION_KEY" in live.json["message"]
    finally:
        other.extensions["metamcp"].close()
