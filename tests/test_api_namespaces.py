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


def _prompts(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "description": f"prompt {n}", "arguments": [{"name": "topic", "required": True}]}
            for n in names]


def _attach(client: FlaskClient, auth: dict[str, str], ns: str, server: str, status: str = "active") -> Any:
    return client.put(f"/api/v1/namespaces/{ns}/servers/{server}", headers=auth, json={"status": status})


def test_naming_is_set_shown_and_validated(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get(f"/api/v1/namespaces/{_namespace(client, auth)}", headers=auth).json["naming"] == "prefixed"
    reply = client.post("/api/v1/namespaces", headers=auth, json={"name": "plain", "naming": "original"})
    assert reply.status_code == 201 and reply.json["naming"] == "original"
    reply = client.post("/api/v1/namespaces", headers=auth, json={"name": "odd", "naming": "short"})
    assert reply.status_code == 422 and "naming" in reply.json["details"]
    reply = client.patch(f"/api/v1/namespaces/{reply_id(client, auth, 'plain')}", headers=auth,
                         json={"naming": None})
    assert reply.status_code == 422
    listed = client.get("/api/v1/namespaces", headers=auth).json["namespaces"]
    assert {n["name"]: n["naming"] for n in listed} == {"plain": "original", "research": "prefixed"}
    detail = client.get(f"/api/v1/namespaces/{reply_id(client, auth, 'plain')}", headers=auth).json
    assert detail["conflicts"] == []  # no server lists anything


def reply_id(client: FlaskClient, auth: dict[str, str], name: str) -> str:
    return next(n["id"] for n in client.get("/api/v1/namespaces", headers=auth).json["namespaces"]
                if n["name"] == name)


def test_switching_to_original_names_is_refused_while_two_servers_share_a_name(
        app: Flask, client: FlaskClient, auth: dict[str, str]) -> None:
    files, web = _server(client, auth, "files"), _server(client, auth, "web")
    registry = _registry(app)
    registry.sync("tools", files, _tools("read", "stat"))
    registry.sync("tools", web, _tools("read", "fetch"))
    registry.sync("prompts", web, _prompts("stat"))  # a prompt may share a tool's name
    ns = _namespace(client, auth)
    assert _attach(client, auth, ns, files).status_code == 200
    assert _attach(client, auth, ns, web).status_code == 200
    reply = client.patch(f"/api/v1/namespaces/{ns}", headers=auth, json={"naming": "original", "description": "x"})
    assert reply.status_code == 409, reply.json
    assert reply.json["error"] == "conflict"
    assert reply.json["details"]["servers"] == ["files", "web"] and reply.json["details"]["name"] == "read"
    assert "'files'" in reply.json["message"] and "'web'" in reply.json["message"] and "'read'" in reply.json["message"]
    got = client.get(f"/api/v1/namespaces/{ns}", headers=auth).json
    assert got["naming"] == "prefixed" and got["description"] == "d"  # all or nothing
    tools = {(t["server_name"], t["original_name"]): t["id"] for t in registry.items("tools", ns)}
    # Switched off, web's read holds no name: the switch passes and names are the upstreams'.
    assert client.patch(f"/api/v1/namespaces/{ns}/tools/{tools['web', 'read']}", headers=auth,
                        json={"status": "inactive"}).status_code == 200
    reply = client.patch(f"/api/v1/namespaces/{ns}", headers=auth, json={"naming": "original"})
    assert reply.status_code == 200 and reply.json["naming"] == "original"
    shown = {(t["server_name"], t["original_name"]): t["name"] for t in registry.items("tools", ns)}
    assert shown == {("files", "read"): "read", ("files", "stat"): "stat", ("web", "read"): "read",
                     ("web", "fetch"): "fetch"}
    view = registry.view(ns)
    assert view is not None and view.naming == "original" and view.servers == ("files", "web")
    # Switching it on again, or renaming fetch onto a taken name, is refused; a free name is not.
    reply = client.patch(f"/api/v1/namespaces/{ns}/tools/{tools['web', 'read']}", headers=auth,
                         json={"status": "active"})
    assert reply.status_code == 409 and reply.json["details"]["servers"] == ["files", "web"]
    reply = client.patch(f"/api/v1/namespaces/{ns}/tools/{tools['web', 'fetch']}", headers=auth, json={"name": "stat"})
    assert reply.status_code == 409 and reply.json["details"] == {
        "kind": "tool", "name": "stat", "servers": ["files", "web"],
        "ids": [str(tools["files", "stat"]), str(tools["web", "fetch"])]}
    reply = client.patch(f"/api/v1/namespaces/{ns}/tools", headers=auth, json=[
        {"id": tools["web", "read"], "status": "active", "name": "web_read"}])
    assert reply.status_code == 200
    assert {t["name"] for t in reply.json["tools"]} == {"read", "stat", "web_read", "fetch"}
    # Back to prefixed: always possible (server names are unique).
    assert client.patch(f"/api/v1/namespaces/{ns}", headers=auth, json={"naming": "prefixed"}).status_code == 200
    assert {t["name"] for t in registry.items("tools", ns)} == {"files__read", "files__stat", "web_read", "web__fetch"}


def test_attaching_or_activating_a_server_whose_names_are_taken_is_refused(
        app: Flask, client: FlaskClient, auth: dict[str, str]) -> None:
    files, web, other = (_server(client, auth, name) for name in ("files", "web", "other"))
    registry = _registry(app)
    registry.sync("tools", files, _tools("read"))
    registry.sync("prompts", files, _prompts("summarize"))
    registry.sync("tools", web, _tools("fetch"))
    registry.sync("prompts", web, _prompts("summarize"))
    registry.sync("tools", other, _tools("other"))
    reply = client.post("/api/v1/namespaces", headers=auth, json={"name": "plain", "naming": "original"})
    ns = reply.json["id"]
    assert _attach(client, auth, ns, files).status_code == 200
    reply = _attach(client, auth, ns, web)
    assert reply.status_code == 409, reply.json
    assert reply.json["details"]["kind"] == "prompt" and reply.json["details"]["name"] == "summarize"
    assert reply.json["details"]["servers"] == ["files", "web"]
    assert [s["name"] for s in client.get(f"/api/v1/namespaces/{ns}", headers=auth).json["servers"]] == ["files"]
    # Attached switched off it holds no name; activating it is the same refusal.
    assert _attach(client, auth, ns, web, "inactive").status_code == 200
    assert _attach(client, auth, ns, other).status_code == 200
    assert _attach(client, auth, ns, web).status_code == 409
    # Servers keep the order they were attached in (the first keeps a name several list later).
    assert [s["name"] for s in client.get(f"/api/v1/namespaces/{ns}", headers=auth).json["servers"]] == [
        "files", "web", "other"]
    prompt = next(p for p in registry.items("prompts", ns) if p["server_name"] == "web")
    reply = client.patch(f"/api/v1/namespaces/{ns}/prompts/{prompt['id']}", headers=auth,
                         json={"name": "web_summary"})
    assert reply.status_code == 200 and reply.json["name"] == "web_summary"
    assert _attach(client, auth, ns, web).status_code == 200
    view = registry.view(ns)
    assert view is not None and view.servers == ("files", "web", "other")


def test_prompt_status_and_overrides(app: Flask, client: FlaskClient, auth: dict[str, str]) -> None:
    files, web = _server(client, auth, "files"), _server(client, auth, "web")
    registry = _registry(app)
    registry.sync("prompts", files, _prompts("summarize", "review"))
    registry.sync("prompts", web, _prompts("summarize"))
    ns = _namespace(client, auth)
    _attach(client, auth, ns, files)
    _attach(client, auth, ns, web)
    reply = client.get(f"/api/v1/namespaces/{ns}/prompts", headers=auth)
    assert reply.status_code == 200
    prompts = {(p["server_name"], p["original_name"]): p for p in reply.json["prompts"]}
    summarize = prompts["files", "summarize"]
    assert summarize["name"] == "files__summarize" and summarize["status"] == "active"
    assert summarize["arguments"] == [{"name": "topic", "required": True}]
    assert summarize["overrides"] == {"name": None, "title": None, "description": None}
    assert "annotations" not in summarize and "input_schema" not in summarize
    url = f"/api/v1/namespaces/{ns}/prompts/{summarize['id']}"
    reply = client.patch(url, headers=auth, json={"name": "sum", "title": "Sum", "description": "Sum it up"})
    assert reply.status_code == 200, reply.json
    assert (reply.json["name"], reply.json["title"], reply.json["description"]) == ("sum", "Sum", "Sum it up")
    assert client.patch(url, headers=auth, json={"annotations": {"x": 1}}).status_code == 422  # prompts have none
    assert client.patch(url, headers=auth, json={"name": "no spaces"}).status_code == 422
    assert client.patch(url, headers=auth, json={}).status_code == 422
    reply = client.patch(f"/api/v1/namespaces/{ns}/prompts/{prompts['web', 'summarize']['id']}", headers=auth,
                         json={"name": "files__review"})
    assert reply.status_code == 409 and reply.json["details"]["servers"] == ["files", "web"]
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.patch(f"/api/v1/namespaces/{ns}/prompts/{missing}", headers=auth,
                        json={"status": "inactive"}).status_code == 404
    reply = client.patch(f"/api/v1/namespaces/{ns}/prompts", headers=auth, json=[
        {"id": prompts["files", "review"]["id"], "status": "inactive"},
        {"id": prompts["web", "summarize"]["id"], "name": "sum"}])  # taken by the override above
    assert reply.status_code == 409
    assert client.patch(f"/api/v1/namespaces/{ns}/prompts", headers=auth, json=[]).status_code == 422
    reply = client.patch(f"/api/v1/namespaces/{ns}/prompts", headers=auth, json=[
        {"id": prompts["files", "review"]["id"], "status": "inactive"}])
    assert reply.status_code == 200
    view = registry.view(ns)
    assert view is not None
    assert view.settings("prompts", "files", "summarize") == ItemSettings("active", "sum", "Sum", "Sum it up", {})
    assert not view.settings("prompts", "files", "review").active
    assert view.settings("tools", "files", "summarize") == ItemSettings()  # tools are apart
    # An inactive prompt's override still holds its name (the database keeps overrides unique).
    reply = client.patch(f"/api/v1/namespaces/{ns}/prompts", headers=auth, json=[
        {"id": summarize["id"], "status": "inactive"}, {"id": prompts["web", "summarize"]["id"], "name": "sum"}])
    assert reply.status_code == 409 and reply.json["details"]["name"] == "sum"
    # The tools of the namespace are untouched by all this.
    assert client.get(f"/api/v1/namespaces/{ns}/tools", headers=auth).json == {"tools": []}
