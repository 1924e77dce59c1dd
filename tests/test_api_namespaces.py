"""Namespaces, the tools table and endpoints through the REST API and the registries (real PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from metamcp.db import Database
from metamcp.namespaces import ItemSettings, NamespaceRegistry


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"X-API-Key": api_key}


def _server(client: FlaskClient, auth: dict[str, str], name: str) -> str:
    reply = client.post("/api/v1/mcp/servers", headers=auth,
                        json={"name": name, "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"})
    assert reply.status_code == 201, reply.json
    return reply.json["id"]


def _namespace(client: FlaskClient, auth: dict[str, str], name: str = "research") -> str:
    reply = client.post("/api/v1/namespaces", headers=auth, json={"name": name, "description": "d"})
    assert reply.status_code == 201, reply.json
    return reply.json["id"]


def _registry(app: Flask) -> NamespaceRegistry:
    return app.extensions["metamcp"].namespaces


def test_namespace_crud_and_attachments(client: FlaskClient, auth: dict[str, str]) -> None:
    server = _server(client, auth, "files")
    ns = _namespace(client, auth)
    assert client.post("/api/v1/namespaces", headers=auth, json={"name": "research"}).status_code == 409
    assert client.post("/api/v1/namespaces", headers=auth, json={"name": "no spaces"}).status_code == 422
    assert client.post("/api/v1/namespaces", headers=auth, json={"name": "x", "extra": 1}).status_code == 422
    reply = client.put(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth, json={"status": "inactive"})
    assert reply.status_code == 200
    assert reply.json["servers"] == [{"id": server, "name": "files", "status": "inactive", "is_active": True}]
    assert client.put(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth,
                      json={"status": "paused"}).status_code == 422
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.put(f"/api/v1/namespaces/{ns}/servers/{missing}", headers=auth, json={"status": "active"}).status_code == 404
    assert client.put(f"/api/v1/namespaces/{missing}/servers/{server}", headers=auth, json={"status": "active"}).status_code == 404
    reply = client.patch(f"/api/v1/namespaces/{ns}", headers=auth, json={"description": "new"})
    assert reply.json["name"] == "research" and reply.json["description"] == "new"
    assert [n["name"] for n in client.get("/api/v1/namespaces", headers=auth).json["namespaces"]] == ["research"]
    assert client.delete(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth).status_code == 204
    assert client.delete(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth).status_code == 404
    # deleting a server detaches it everywhere
    client.put(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth, json={"status": "active"})
    assert client.delete(f"/api/v1/mcp/servers/{server}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/namespaces/{ns}", headers=auth).json["servers"] == []
    assert client.delete(f"/api/v1/namespaces/{ns}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/namespaces/{ns}", headers=auth).status_code == 404


def test_endpoint_crud(client: FlaskClient, auth: dict[str, str]) -> None:
    ns = _namespace(client, auth)
    reply = client.post("/api/v1/endpoints", headers=auth, json={"name": "team", "namespace_id": ns})
    assert reply.status_code == 201, reply.json
    endpoint = reply.json
    assert endpoint["auth"] == {"api_key": True, "query_param": False}
    assert endpoint["urls"]["mcp"] == "/metamcp/team/mcp" and endpoint["namespace_name"] == "research"
    assert client.post("/api/v1/endpoints", headers=auth, json={"name": "team", "namespace_id": ns}).status_code == 409
    reply = client.post("/api/v1/endpoints", headers=auth,
                        json={"name": "x", "namespace_id": "00000000-0000-0000-0000-000000000000"})
    assert reply.status_code == 422 and "namespace_id" in reply.json["details"]
    assert client.post("/api/v1/endpoints", headers=auth, json={"name": "a/b", "namespace_id": ns}).status_code == 422
    reply = client.patch(f"/api/v1/endpoints/{endpoint['id']}", headers=auth, json={"auth": {"api_key": False}})
    assert reply.json["auth"] == {"api_key": False, "query_param": False} and reply.json["name"] == "team"
    # a published namespace cannot be deleted
    assert client.delete(f"/api/v1/namespaces/{ns}", headers=auth).status_code == 409
    assert client.delete(f"/api/v1/endpoints/{endpoint['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/endpoints/{endpoint['id']}", headers=auth).status_code == 404
    assert client.delete(f"/api/v1/namespaces/{ns}", headers=auth).status_code == 204


def _tools(*names: str, description: str = "d") -> list[dict[str, Any]]:
    return [{"name": n, "description": description, "inputSchema": {"type": "object"}} for n in names]


def test_sync_writes_only_what_changed_and_keeps_settings(
        app: Flask, client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    server = _server(client, auth, "files")
    ns = _namespace(client, auth)
    client.put(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth, json={"status": "active"})
    registry = _registry(app)

    def rows() -> dict[str, Any]:
        with db.transaction() as cur:
            cur.execute("SELECT name, listed, updated_at, definition FROM tools")
            return {r["name"]: dict(r) for r in cur.fetchall()}

    registry.sync("tools", server, _tools("read", "write"))
    first = rows()
    assert set(first) == {"read", "write"}
    registry.sync("tools", server, _tools("read", "write"))  # same list: nothing written
    fresh = NamespaceRegistry(db)  # another process: no memory of what it wrote
    fresh.sync("tools", server, _tools("read", "write"))
    assert rows() == first
    fresh.sync("tools", server, [*_tools("read"), *_tools("write", description="changed")])
    second = rows()
    assert second["read"] == first["read"] and second["write"]["updated_at"] > first["write"]["updated_at"]

    tool_id = {t["original_name"]: t["id"] for t in registry.items("tools", ns)}["write"]
    reply = client.patch(f"/api/v1/namespaces/{ns}/tools/{tool_id}", headers=auth, json={"name": "save"})
    assert reply.status_code == 200 and reply.json["name"] == "save"
    registry.sync("tools", server, _tools("read"))  # the upstream dropped it: hidden, settings kept
    assert [t["original_name"] for t in registry.items("tools", ns)] == ["read"]
    assert rows()["write"]["listed"] is False
    registry.sync("tools", server, [*_tools("read"), *_tools("write", description="changed")])
    assert {t["original_name"]: t["name"] for t in registry.items("tools", ns)} == {"read": "files__read", "write": "save"}
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.patch(f"/api/v1/namespaces/{ns}/tools/{missing}", headers=auth, json={"status": "inactive"}).status_code == 404


def test_view_maps_settings_by_server_and_upstream_name(
        app: Flask, client: FlaskClient, auth: dict[str, str]) -> None:
    files, web = _server(client, auth, "files"), _server(client, auth, "web")
    ns = _namespace(client, auth)
    client.put(f"/api/v1/namespaces/{ns}/servers/{files}", headers=auth, json={"status": "active"})
    client.put(f"/api/v1/namespaces/{ns}/servers/{web}", headers=auth, json={"status": "inactive"})
    registry = _registry(app)
    registry.sync("tools", files, _tools("read"))
    tool_id = registry.items("tools", ns)[0]["id"]
    client.patch(f"/api/v1/namespaces/{ns}/tools/{tool_id}", headers=auth, json={"status": "inactive", "name": "r"})
    view = registry.view(ns)
    assert view is not None and view.servers == ("files",)
    assert view.settings("tools", "files", "read") == ItemSettings("inactive", "r", None, None, {})
    assert view.settings("tools", "files", "other").active
    # The upstream drops the tool, the view is rebuilt, then the tool comes back (which does not
    # rebuild the view): it must still be off, not active under its default name.
    registry.sync("tools", files, [])
    registry.on_change()
    view = registry.view(ns)
    registry.sync("tools", files, _tools("read"))
    assert view is not None and view.settings("tools", "files", "read") == ItemSettings("inactive", "r", None, None, {})


def test_tool_settings_apply() -> None:
    tool = {"name": "files__read", "description": "Read", "annotations": {"title": "R", "readOnlyHint": False}}
    shown = ItemSettings("active", None, "Reader", None, {"readOnlyHint": True}).apply(tool, "files__read")
    assert shown == {"name": "files__read", "description": "Read", "title": "Reader",
                     "annotations": {"title": "R", "readOnlyHint": True}}
    assert ItemSettings(name="read").apply(tool, "files__read")["name"] == "read"
    assert tool["name"] == "files__read"  # not modified in place
