"""The Streamable HTTP rules of /mcp, request by request (Flask test client, real database)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from metamcp.app import create_app
from metamcp.config import Settings

from .conftest import TransactionCounter
from .upstreams import UpstreamProcess

ACCEPT = "application/json, text/event-stream"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Mcp:
    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client = client
        self.key = key
        self.session: str | None = None

    def post(self, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None,
             session: bool = True) -> TestResponse:
        sent = {"X-API-Key": self.key, "Accept": ACCEPT, "Content-Type": "application/json"}
        if session and self.session:
            sent["Mcp-Session-Id"] = self.session
        sent.update(headers or {})
        data = raw if raw is not None else json.dumps(body)
        return self.client.post("/mcp", data=data, headers={k: v for k, v in sent.items() if v is not None})

    def initialize(self, version: str = "2025-06-18") -> dict[str, Any]:
        body = {**INIT, "params": {**INIT["params"], "protocolVersion": version}}
        response = self.post(body, session=False)
        assert response.status_code == 200, response.data
        self.session = response.headers["Mcp-Session-Id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return response.json

    def call(self, method: str, params: dict[str, Any] | None = None, request_id: int = 7) -> TestResponse:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        return self.post(message)


@pytest.fixture
def mcp(client: FlaskClient, api_key: str) -> Mcp:
    return Mcp(client, api_key)


def error_code(response: TestResponse) -> int:
    return response.json["error"]["code"]


def test_initialize_negotiates_and_issues_a_session(mcp: Mcp) -> None:
    result = mcp.initialize("2025-06-18")["result"]
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "metamcp"
    assert set(result["capabilities"]) == {"tools", "prompts", "resources", "completions", "logging"}
    assert len(mcp.session) >= 43 and mcp.session.isascii() and mcp.session.isprintable()
    newest = mcp.post({**INIT, "params": {**INIT["params"], "protocolVersion": "2099-01-01"}}, session=False)
    assert newest.json["result"]["protocolVersion"] == "2025-11-25"
    assert mcp.call("ping").json == {"jsonrpc": "2.0", "id": 7, "result": {}}


def test_sessions_missing_unknown_foreign_and_deleted(mcp: Mcp, client: FlaskClient,
                                                       make_key: Callable[..., tuple[int, str]]) -> None:
    mcp.initialize()
    assert mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, session=False).status_code == 400
    assert mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Mcp-Session-Id": "unknown"}).status_code == 404
    _other_id, other_key = make_key("other")
    foreign = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"X-API-Key": other_key})
    assert foreign.status_code == 404
    deleted = client.delete("/mcp", headers={"X-API-Key": mcp.key, "Mcp-Session-Id": mcp.session})
    assert deleted.status_code == 204
    assert mcp.call("ping").status_code == 404


def test_authentication_errors_are_json_rpc_shaped(mcp: Mcp, client: FlaskClient) -> None:
    for headers in ({"X-API-Key": None}, {"X-API-Key": "mcp_wrong"}, {"X-API-Key": None,
                                                                      "Authorization": "Bearer junk"}):
        response = mcp.post(INIT, headers=headers, session=False)
        assert response.status_code == 401
        assert response.json["jsonrpc"] == "2.0" and response.json["error"]["message"].startswith("Unauthorized")


def test_jwt_and_bearer_key_are_accepted(mcp: Mcp, client: FlaskClient) -> None:
    token = client.post("/api/v1/auth/token", json={"api_key": mcp.key}).json["access_token"]
    for auth in (f"Bearer {token}", f"Bearer {mcp.key}"):
        response = mcp.post(INIT, headers={"X-API-Key": None, "Authorization": auth}, session=False)
        assert response.status_code == 200


def test_origin_is_validated(mcp: Mcp) -> None:
    assert mcp.post(INIT, headers={"Origin": "https://evil.example"}, session=False).status_code == 403
    assert mcp.post(INIT, headers={"Origin": "http://localhost:6274"}, session=False).status_code == 200


def test_host_is_validated_on_a_loopback_listener(mcp: Mcp, settings: Settings, api_key: str) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 gets 421, as the official SDK answers."""
    refused = mcp.post(INIT, headers={"Host": "evil.example:12009"}, session=False)
    assert refused.status_code == 421 and error_code(refused) == -32600
    assert "METAMCP_ALLOWED_HOSTS" in refused.json["error"]["message"]
    for host in ("localhost:12009", "127.0.0.1:12009", "[::1]:12009"):
        assert mcp.post(INIT, headers={"Host": host}, session=False).status_code == 200, host
    for changed, host, status in ((replace(settings, allowed_hosts=("gw.example",)), "gw.example:443", 200),
                                  (replace(settings, allowed_hosts=("gw.example",)), "other.example", 421),
                                  (replace(settings, host="0.0.0.0"), "evil.example", 200)):
        app = create_app(changed, listen=False)
        try:
            other = Mcp(app.test_client(), api_key)
            assert other.post(INIT, headers={"Host": host}, session=False).status_code == status, (host, status)
        finally:
            app.extensions["metamcp"].close()


def test_header_checks(mcp: Mcp) -> None:
    mcp.initialize()
    assert mcp.call("ping").status_code == 200
    assert mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"MCP-Protocol-Version": "1999-01-01"}).status_code == 400
    assert mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"MCP-Protocol-Version": "2025-06-18"}).status_code == 200
    assert mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Accept": "text/html"}).status_code == 406
    assert mcp.post({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Content-Type": "text/plain"}).status_code == 415


def test_json_rpc_errors(mcp: Mcp) -> None:
    mcp.initialize()
    parse = mcp.post(None, raw=b"{oops")
    assert parse.status_code == 400 and error_code(parse) == -32700
    invalid = mcp.post({"jsonrpc": "2.0", "id": 1})
    assert invalid.status_code == 400 and error_code(invalid) == -32600
    assert error_code(mcp.call("no/such/method")) == -32601
    assert error_code(mcp.call("tools/call", {"name": 5})) == -32602
    assert error_code(mcp.call("tools/call", {"name": "x__y", "arguments": []})) == -32602
    assert error_code(mcp.call("tools/list", {"cursor": "bogus"})) == -32602
    assert error_code(mcp.call("logging/setLevel", {"level": "loud"})) == -32602
    assert mcp.call("logging/setLevel", {"level": "error"}).json["result"] == {}


def test_refusals_past_parsing_echo_the_request_id(mcp: Mcp) -> None:
    """Once the body parses, the error names the request it answers; a body that is not JSON
    gets id null (no id in it can be trusted)."""
    mcp.initialize()
    ping = {"jsonrpc": "2.0", "id": "p-1", "method": "ping"}
    cases = [
        (mcp.post(ping, headers={"Mcp-Session-Id": None}), 400),  # no session header
        (mcp.post(ping, headers={"Mcp-Session-Id": "no-such-session"}), 404),
        (mcp.post(ping, headers={"MCP-Protocol-Version": "1999-01-01"}), 400),
        (mcp.post({"jsonrpc": "2.0", "id": "p-1", "method": 5}), 400),  # bad envelope, readable id
    ]
    for response, status in cases:
        assert response.status_code == status and response.json["id"] == "p-1", response.json
    assert mcp.post({"jsonrpc": "2.0", "id": [1], "method": "ping"}).json["id"] is None  # an invalid id
    assert mcp.post(None, raw=b'{"jsonrpc": "2.0", "id": 9, oops').json["id"] is None
    mcp.initialize("2025-03-26")  # the revision that allows batches: each item's own id
    batch = mcp.post([{"jsonrpc": "2.0", "id": 3, "method": 5}, {"jsonrpc": "2.0", "id": [1], "method": 5}],
                     headers={"MCP-Protocol-Version": "2025-03-26"})
    assert batch.status_code == 200 and [item["id"] for item in batch.json] == [3, None]


def test_a_client_that_accepts_only_json_gets_json(mcp: Mcp) -> None:
    mcp.initialize()
    answer = mcp.post({"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers={"Accept": "application/json"})
    assert answer.status_code == 200 and answer.mimetype == "application/json" and answer.json["id"] == 4
    refused = mcp.post({"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers={"Accept": "text/event-stream"})
    assert refused.status_code == 406 and "application/json" in refused.json["error"]["message"]


def test_discover_on_a_2025_session_gets_a_plain_error(mcp: Mcp) -> None:
    """On a session, server/discover is no 2026-07-28 request (tests/test_modern_transport.py
    has those): a 2025 client is told to initialize."""
    mcp.initialize()
    probe = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}
    response = mcp.post(probe)
    assert response.status_code == 400 and error_code(response) == -32601
    assert response.json["id"] == 1


def test_batches_only_in_2025_03_26(mcp: Mcp) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/x"},
             {"jsonrpc": "2.0", "id": 2, "method": "nope"}]
    mcp.initialize("2025-06-18")
    assert mcp.post(batch).status_code == 400
    mcp.initialize("2025-03-26")
    response = mcp.post(batch)
    assert response.status_code == 200
    assert [r["id"] for r in response.json] == [1, 2]
    assert response.json[0]["result"] == {} and response.json[1]["error"]["code"] == -32601
    assert mcp.post([{"jsonrpc": "2.0", "method": "notifications/x"}]).status_code == 202
    assert mcp.post([]).status_code == 400


def test_get_stream_sends_keep_alives(mcp: Mcp, client: FlaskClient) -> None:
    mcp.initialize()
    headers = {"X-API-Key": mcp.key, "Mcp-Session-Id": mcp.session, "Accept": "text/event-stream"}
    response = client.get("/mcp", headers=headers, buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    chunks = iter(response.response)
    assert next(chunks).startswith(b":")
    response.close()
    assert client.get("/mcp", headers={**headers, "Accept": "application/json"}).status_code == 406


def test_empty_gateway_lists(mcp: Mcp) -> None:
    mcp.initialize()
    for method, key in (("tools/list", "tools"), ("prompts/list", "prompts"),
                        ("resources/list", "resources"), ("resources/templates/list", "resourceTemplates")):
        assert mcp.call(method).json["result"] == {key: []}
    assert error_code(mcp.call("tools/call", {"name": "a__b"})) == -32602


def test_warm_tool_calls_make_no_database_query(app: Flask, mcp: Mcp) -> None:
    """After warm-up, authentication, session, registry and routing all come from memory."""
    upstream = UpstreamProcess("warm", json_response=True).start()
    try:
        created = mcp.client.post("/api/v1/mcp/servers", headers={"X-API-Key": mcp.key}, json={
            "name": "warm", "transport": "streamable_http", "url": upstream.url})
        assert created.status_code == 201
        mcp.initialize()
        call = {"name": "warm__echo", "arguments": {"message": "hi"}}
        assert "warm: hi" in mcp.call("tools/call", call).get_data(as_text=True)
        transactions = TransactionCounter(app.extensions["metamcp"].db)
        for index in range(50):
            reply = mcp.call("tools/call", {**call, "arguments": {"message": f"n{index}"}})
            assert f"warm: n{index}" in reply.get_data(as_text=True)
        assert mcp.call("tools/list").json["result"]["tools"]
        assert transactions.count == 0
    finally:
        upstream.stop()


def test_upstream_without_prompts_or_resources_still_serves_its_tools(mcp: Mcp) -> None:
    """Regression: prompts/list answered -32601 marked the whole upstream failed, hiding its tools."""
    server = Path(__file__).resolve().parent / "servers" / "tools_only_server.py"
    created = mcp.client.post("/api/v1/mcp/servers", headers={"X-API-Key": mcp.key}, json={
        "name": "plain", "transport": "stdio", "command": sys.executable, "args": [str(server)]})
    assert created.status_code == 201
    mcp.initialize()
    assert mcp.call("prompts/list").json["result"] == {"prompts": []}
    assert mcp.call("resources/list").json["result"] == {"resources": []}
    assert mcp.call("resources/templates/list").json["result"] == {"resourceTemplates": []}
    assert [t["name"] for t in mcp.call("tools/list").json["result"]["tools"]] == ["plain__shout"]
    reply = mcp.call("tools/call", {"name": "plain__shout", "arguments": {"text": "hi"}})
    assert "HI" in reply.get_data(as_text=True)
    health = mcp.client.get("/api/v1/health", headers={"X-API-Key": mcp.key}).json["upstreams"]
    assert [(u["name"], u["status"]) for u in health] == [("plain", "ok")]
