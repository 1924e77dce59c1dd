"""Calls through a namespace with original names and a renamed prompt read no table once warm."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from .conftest import TransactionCounter
from .upstreams import UpstreamProcess
from .upstreams import start_upstream as start_upstream  # noqa: F401 - the fixture

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def answer(reply: Any) -> dict[str, Any]:
    """The JSON-RPC answer of a reply sent as JSON or as an SSE stream."""
    text = reply.get_data(as_text=True)
    if reply.mimetype == "application/json":
        return dict(json.loads(text))
    return dict(json.loads([line for line in text.splitlines() if line.startswith("data:")][-1][5:]))


def test_warm_calls_prompts_and_reads_in_a_namespace_make_no_database_query(
        app: Flask, client: FlaskClient, api_key: str, start_upstream: Callable[..., UpstreamProcess]) -> None:
    upstream = start_upstream("warm", json_response=True, extra_args=("--uri-host", "shared"))
    admin = {"X-API-Key": api_key}
    server = client.post("/api/v1/mcp/servers", headers=admin, json={
        "name": "warm", "transport": "streamable_http", "url": upstream.url}).json["id"]
    ns = client.post("/api/v1/namespaces", headers=admin, json={"name": "plain", "naming": "original"}).json["id"]
    assert client.put(f"/api/v1/namespaces/{ns}/servers/{server}", headers=admin,
                      json={"status": "active"}).status_code == 200
    greet = next(p for p in client.get(f"/api/v1/namespaces/{ns}/prompts", headers=admin).json["prompts"]
                 if p["original_name"] == "greet")
    assert client.patch(f"/api/v1/namespaces/{ns}/prompts/{greet['id']}", headers=admin,
                        json={"name": "hello"}).status_code == 200
    assert client.post("/api/v1/endpoints", headers=admin, json={
        "name": "plain", "namespace_id": ns, "auth": {"api_key": False}}).status_code == 201
    url = "/metamcp/plain/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    session = {**HEADERS, "Mcp-Session-Id": client.post(url, json=init, headers=HEADERS).headers["Mcp-Session-Id"]}
    requests = [
        ("tools/call", {"name": "echo", "arguments": {"message": "hi"}}, "warm: hi"),
        ("prompts/get", {"name": "hello", "arguments": {"name": "Ada"}}, "greet Ada"),
        ("resources/read", {"uri": "test://shared/info"}, '\\"name\\": \\"warm\\"'),
    ]

    def run_all() -> None:
        for method, params, expected in requests:
            reply = answer(client.post(url, json={"jsonrpc": "2.0", "id": 2, "method": method, "params": params},
                                       headers=session))
            assert expected in json.dumps(reply["result"]), (method, reply)

    run_all()  # warm: the view, the lists and the upstream session
    transactions = TransactionCounter(app.extensions["metamcp"].db)
    for _ in range(5):
        run_all()
    assert transactions.count == 0
    refused = answer(client.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "prompts/get",
                                            "params": {"name": "greet"}}, headers=session))
    assert refused["error"]["code"] == -32602 and "Unknown prompt" in refused["error"]["message"]
