"""Refusals of the REST and MCP routes: 405 with Allow, empty PATCH/PUT bodies (real PostgreSQL)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from metamcp.mcp.jsonrpc import INVALID_REQUEST


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"X-API-Key": api_key}


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/api/v1/auth/token", {"POST"}),
    ("DELETE", "/api/v1/keys", {"GET", "POST"}),
    ("POST", "/api/v1/keys/1", {"GET", "PATCH", "DELETE"}),
    ("PUT", "/api/v1/namespaces", {"GET", "POST"}),
    ("POST", "/api/v1/mcp/servers/00000000-0000-0000-0000-000000000000/tools", {"GET"}),
    ("DELETE", "/health", {"GET"}),
])
def test_rest_405_carries_allow(client: FlaskClient, auth: dict[str, str], method: str, path: str,
                                allowed: set[str]) -> None:
    reply = client.open(path, method=method, headers=auth)
    assert reply.status_code == 405
    assert allowed <= {m.strip() for m in reply.headers["Allow"].split(",")}
    assert reply.json["error"] == "method_not_allowed" and reply.json["message"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PUT", "/mcp", {"GET", "POST", "DELETE"}),
    ("PATCH", "/metamcp/any/mcp", {"GET", "POST", "DELETE"}),
    ("DELETE", "/metamcp/any/sse", {"GET"}),
    ("GET", "/metamcp/any/message", {"POST"}),
])
def test_mcp_405_is_a_json_rpc_error_with_allow(client: FlaskClient, method: str, path: str,
                                                allowed: set[str]) -> None:
    reply = client.open(path, method=method)
    assert reply.status_code == 405
    assert allowed <= {m.strip() for m in reply.headers["Allow"].split(",")}
    assert reply.mimetype == "application/json"
    assert reply.json["jsonrpc"] == "2.0" and reply.json["error"]["code"] == INVALID_REQUEST


def test_empty_patch_and_put_bodies_get_422(client: FlaskClient, auth: dict[str, str]) -> None:
    server = client.post("/api/v1/mcp/servers", headers=auth, json={
        "name": "files", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp",
        "description": "kept"}).json
    ns = client.post("/api/v1/namespaces", headers=auth, json={"name": "research"}).json["id"]
    endpoint = client.post("/api/v1/endpoints", headers=auth, json={"name": "research", "namespace_id": ns}).json
    key = client.post("/api/v1/keys", headers=auth, json={"name": "bot", "role": "client"}).json
    tool = "00000000-0000-0000-0000-000000000001"  # validation comes before the lookup
    routes = [
        ("PATCH", f"/api/v1/mcp/servers/{server['id']}"),
        ("PUT", f"/api/v1/mcp/servers/{server['id']}"),
        ("PATCH", f"/api/v1/namespaces/{ns}"),
        ("PUT", f"/api/v1/namespaces/{ns}/servers/{server['id']}"),
        ("PATCH", f"/api/v1/namespaces/{ns}/tools"),
        ("PATCH", f"/api/v1/namespaces/{ns}/tools/{tool}"),
        ("PATCH", f"/api/v1/endpoints/{endpoint['id']}"),
        ("PATCH", f"/api/v1/keys/{key['id']}"),
    ]
    for method, path in routes:
        empty = [] if path.endswith("/tools") else {}
        for kwargs in ({"json": empty}, {}, {"data": b"", "content_type": "application/json"}):
            reply = client.open(path, method=method, headers=auth, **kwargs)
            assert reply.status_code == 422, (method, path, kwargs, reply.json)
            assert reply.json["error"] == "validation_error" and reply.json["message"], (method, path)
    assert "send at least one" in client.patch(f"/api/v1/namespaces/{ns}", headers=auth, json={}).json["message"]
    # Nothing was reset by the refused PUTs and PATCHes.
    assert client.get(f"/api/v1/mcp/servers/{server['id']}", headers=auth).json == server
    assert client.get(f"/api/v1/namespaces/{ns}", headers=auth).json["servers"] == []
    assert client.get(f"/api/v1/keys/{key['id']}", headers=auth).json["name"] == "bot"
    # A body that does change something still works.
    reply = client.put(f"/api/v1/namespaces/{ns}/servers/{server['id']}", headers=auth, json={"status": "active"})
    assert reply.status_code == 200


@pytest.mark.parametrize(("method", "path", "says"), [
    ("GET", "/api/v1/mcp/servers/not-a-uuid", "'not-a-uuid' is not a valid id here: these ids are UUIDs."),
    ("DELETE", "/api/v1/mcp/servers/not-a-uuid", "'not-a-uuid' is not a valid id here"),
    ("GET", "/api/v1/mcp/servers/x/tools", "'x' is not a valid id here: these ids are UUIDs."),
    ("GET", "/api/v1/namespaces/nope", "'nope' is not a valid id here: these ids are UUIDs."),
    ("PUT", "/api/v1/namespaces/00000000-0000-0000-0000-000000000000/servers/two",
     "'two' is not a valid id here: these ids are UUIDs."),
    ("GET", "/api/v1/endpoints/nope", "'nope' is not a valid id here: these ids are UUIDs."),
    ("GET", "/api/v1/keys/abc", "'abc' is not a valid id here: these ids are integers."),
    ("GET", "/api/v1/nothing/here", "No route /api/v1/nothing/here."),
    ("GET", "/api/v2/mcp/servers", "No route /api/v2/mcp/servers."),
])
def test_rest_404_for_a_bad_id_or_path_says_so_in_json(client: FlaskClient, auth: dict[str, str],
                                                      method: str, path: str, says: str) -> None:
    reply = client.open(path, method=method, headers=auth)
    assert reply.status_code == 404
    assert reply.mimetype == "application/json"
    assert set(reply.json) == {"error", "message", "details"} and reply.json["error"] == "not_found"
    assert reply.json["message"].startswith(says)
    assert "spelling" not in reply.json["message"]  # werkzeug's default text


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://example.com/mcp", "url: Must be an absolute http:// or https:// URL with a host."),
    ("http:///mcp", "url: Must be an absolute http:// or https:// URL with a host."),
    ("not a url", "url: Must be an absolute http:// or https:// URL with a host."),
])
def test_bad_server_url_422_names_the_url(client: FlaskClient, auth: dict[str, str], url: str,
                                          says: str) -> None:
    reply = client.post("/api/v1/mcp/servers", headers=auth, json={
        "name": "bad", "transport": "streamable_http", "url": url})
    assert reply.status_code == 422, reply.json
    assert set(reply.json) == {"error", "message", "details"}
    assert reply.json["error"] == "validation_error"
    assert reply.json["message"] == f"The server definition is not valid: {says}"
    assert "url" in reply.json["details"]
