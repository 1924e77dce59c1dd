"""No secret ever reaches a log line, at any level: a live gunicorn (2 workers, DEBUG, JSON lines)
serving a real upstream registered with a bearer token, a header secret and a token in its URL,
and a stdio server with a secret in its environment; REST and MCP calls with API keys, a JWT,
`?api_key=` on an endpoint, refused credentials, a key created over the API, a tool answering
with the upstream's request headers and a call whose upstream is gone. Then every line is one
JSON object, none holds a secret, and each request has its access line under the id it got."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from metamcp import crypto

from .conftest import Gunicorn, child_env, free_port, fresh_keys
from .upstreams import SERVER, UpstreamProcess

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "logs-e2e", "version": "1"}}


class Client:
    """Raw HTTP to the gateway; remembers every answer with what its access line must say."""

    def __init__(self, gateway: Gunicorn) -> None:
        self.gateway = gateway
        self.http = requests.Session()
        self.sent: list[tuple[requests.Response, dict[str, Any]]] = []

    def send(self, method: str, path: str, expect: dict[str, Any], **kwargs: Any) -> requests.Response:
        reply = self.http.request(method, self.gateway.url + path, timeout=30, **kwargs)
        self.sent.append((reply, expect))
        return reply

    def rest(self, method: str, path: str, key: str, expect_key: str | None = "admin", **kwargs: Any) -> requests.Response:
        return self.send(method, path, {"key_name": expect_key}, headers={"X-API-Key": key}, **kwargs)

    def rpc(self, path: str, auth: dict[str, str], method: str, params: dict[str, Any] | None = None,
            session: str | None = None, expect: dict[str, Any] | None = None) -> tuple[requests.Response, Any]:
        headers = {**MCP_HEADERS, **auth, **({"Mcp-Session-Id": session} if session else {})}
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not method.startswith("notifications/"):
            body["id"] = 1
        reply = self.send("POST", path, {"mcp_method": method, **(expect or {})}, headers=headers, json=body)
        if reply.status_code != 200:
            return reply, None
        text = reply.text
        if reply.headers.get("Content-Type", "").startswith("text/event-stream"):
            text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
        return reply, json.loads(text)

    def session(self, path: str, auth: dict[str, str], expect: dict[str, Any]) -> str:
        reply, message = self.rpc(path, auth, "initialize", INITIALIZE, expect=expect)
        assert reply.status_code == 200 and "result" in message, reply.text
        session = reply.headers["Mcp-Session-Id"]
        reply, _ = self.rpc(path, auth, "notifications/initialized", session=session, expect=expect)
        assert reply.status_code == 202, reply.text
        return session


def wait_for_lines(gateway: Gunicorn, request_ids: set[str], timeout: float = 10.0) -> None:
    """Until every request's access line is written (a sink runs after its answer was sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(f'"request_id": "{rid}"' in gateway.output() for rid in request_ids):
            return
        time.sleep(0.1)


def test_no_secret_in_any_log_line_and_an_access_line_per_request(database_url: str, tmp_path: Path) -> None:
    keys = fresh_keys(database_url, admin="admin", client="client")
    jwt_secret = "logs-e2e-jwt-" + secrets.token_urlsafe(32)
    encryption_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    upstream_token = "upstream-bearer-" + secrets.token_urlsafe(16)
    header_secret = "header-secret-" + secrets.token_urlsafe(16)
    url_token = "url-token-" + secrets.token_urlsafe(16)
    stdio_secret = "stdio-env-secret-" + secrets.token_urlsafe(16)
    wrong_key = crypto.generate_api_key().plain
    env = child_env(
        DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path), METAMCP_WORKERS="2",
        METAMCP_LOG_LEVEL="DEBUG", METAMCP_LOG_FORMAT="json", JWT_SECRET=jwt_secret,
        ENCRYPTION_KEY=encryption_key, METAMCP_UPSTREAM_TIMEOUT="5", METAMCP_UPSTREAM_CONNECT_TIMEOUT="2",
    )
    upstream = UpstreamProcess(name="alpha").start()
    gateway = Gunicorn(env, free_port())
    try:
        gateway.wait_ready()
        client = Client(gateway)
        admin, client_key = keys["admin"], keys["client"]

        # The admin API: servers with secrets, a namespace with an endpoint taking ?api_key=, a key.
        reply = client.rest("POST", "/api/v1/mcp/servers", admin, json={
            "name": "alpha", "transport": "streamable_http", "url": f"{upstream.url}?token={url_token}",
            "bearer_token": upstream_token, "headers": {"X-Upstream-Key": header_secret}})
        assert reply.status_code == 201, reply.text
        alpha_id = reply.json()["id"]
        reply = client.rest("POST", "/api/v1/mcp/servers", admin, json={
            "name": "kid", "transport": "stdio", "command": sys.executable,
            "args": [str(SERVER), "--transport", "stdio", "--name", "kid"], "env": {"KID_SECRET": stdio_secret}})
        assert reply.status_code == 201, reply.text
        reply = client.rest("POST", "/api/v1/namespaces", admin, json={"name": "logs"})
        assert reply.status_code == 201, reply.text
        namespace_id = reply.json()["id"]
        reply = client.rest("PUT", f"/api/v1/namespaces/{namespace_id}/servers/{alpha_id}", admin,
                            json={"status": "active"})
        assert reply.status_code == 200, reply.text
        reply = client.rest("POST", "/api/v1/endpoints", admin, json={
            "name": "qp", "namespace_id": namespace_id, "auth": {"api_key": True, "query_param": True}})
        assert reply.status_code == 201, reply.text
        reply = client.rest("POST", "/api/v1/keys", admin, json={"name": "made", "role": "client"})
        assert reply.status_code == 201, reply.text
        made_key = reply.json()["key"]
        assert client.rest("GET", "/api/v1/mcp/servers", admin).status_code == 200
        assert client.rest("GET", "/api/v1/keys", wrong_key, expect_key=None).status_code == 401

        # A JWT for the client key.
        reply = client.send("POST", "/api/v1/auth/token", {}, json={"api_key": client_key})
        assert reply.status_code == 200, reply.text
        token = reply.json()["access_token"]

        # MCP with the key (Authorization: Bearer): tools of both servers, a tool error, and a tool
        # that answers with the headers the upstream got (the bearer token and header secret).
        by_key = {"Authorization": f"Bearer {client_key}"}
        as_client = {"key_name": "client"}
        session = client.session("/mcp", by_key, as_client)
        reply, message = client.rpc("/mcp", by_key, "tools/list", session=session, expect=as_client)
        names = {tool["name"] for tool in message["result"]["tools"]}
        assert {"alpha__echo", "alpha__headers", "kid__echo", "alpha__fail"} <= names, names
        calls = [("alpha__echo", {"message": "hi"}, "alpha", "ok"), ("kid__echo", {"message": "hi"}, "kid", "ok"),
                 ("alpha__headers", {}, "alpha", "ok"), ("alpha__fail", {}, "alpha", "tool_error")]
        for tool, arguments, server, outcome in calls:
            reply, message = client.rpc("/mcp", by_key, "tools/call", {"name": tool, "arguments": arguments},
                                        session=session,
                                        expect={**as_client, "tool": tool, "server": server, "outcome": outcome})
            assert reply.status_code == 200 and "result" in message, reply.text
        assert upstream_token in message_text(client, "alpha__headers")  # the secret went through

        # MCP with the JWT, and through the endpoint with ?api_key= (X-Request-Id of our own).
        by_jwt = {"Authorization": f"Bearer {token}"}
        jwt_session = client.session("/mcp", by_jwt, as_client)
        reply, message = client.rpc("/mcp", by_jwt, "tools/call", {"name": "alpha__echo", "arguments": {"message": "jwt"}},
                                    session=jwt_session, expect={**as_client, "tool": "alpha__echo", "server": "alpha"})
        assert "result" in message, reply.text
        endpoint_path = f"/metamcp/qp/mcp?api_key={client_key}"
        own_id = {"X-Request-Id": "logs-e2e-own-id"}
        endpoint_session = client.session(endpoint_path, {}, {**as_client, "endpoint": "qp"})
        reply, message = client.rpc(endpoint_path, own_id, "tools/call", {"name": "alpha__echo", "arguments": {"message": "qp"}},
                                    session=endpoint_session, expect={**as_client, "endpoint": "qp", "tool": "alpha__echo"})
        assert "result" in message and reply.headers["X-Request-Id"] == "logs-e2e-own-id", reply.text

        # Refused: an unknown key, a JWT signed with another secret, no credential.
        other_jwt = crypto.issue_jwt(1, "another-secret-" + "y" * 32, 60, role="admin")
        for auth in ({"X-API-Key": wrong_key}, {"Authorization": f"Bearer {other_jwt}"}, {}):
            reply, _ = client.rpc("/mcp", auth, "initialize", INITIALIZE, expect={"key_name": None, "mcp_method": None})
            assert reply.status_code == 401, reply.text

        # A call whose upstream is gone.
        upstream.stop()
        reply, message = client.rpc("/mcp", by_key, "tools/call", {"name": "alpha__echo", "arguments": {"message": "x"}},
                                    session=session, expect={**as_client, "tool": "alpha__echo", "outcome": "error"})
        assert reply.status_code == 200 and "error" in message, reply.text
        failed_call = reply.headers["X-Request-Id"]

        request_ids = {reply.headers["X-Request-Id"] for reply, _ in client.sent}
        assert len(request_ids) == len(client.sent)
        wait_for_lines(gateway, request_ids)
    finally:
        gateway.stop()
        upstream.stop()
    output = gateway.output()
    os.unlink(gateway.log.name)

    forbidden = {"admin key": admin, "client key": client_key, "created key": made_key, "wrong key": wrong_key,
                 "JWT": token, "JWT claims": token.split(".")[1], "foreign JWT": other_jwt,
                 "upstream bearer token": upstream_token, "header secret": header_secret,
                 "URL token": url_token, "stdio env secret": stdio_secret, "JWT_SECRET": jwt_secret,
                 "ENCRYPTION_KEY": encryption_key}
    leaked = [what for what, secret in forbidden.items() if secret in output]
    assert not leaked, f"in the log: {leaked}"

    lines = output.splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"ts", "level", "logger", "message", "pid"} <= set(r) for r in records)
    levels = {r["level"] for r in records}
    assert {"DEBUG", "INFO"} <= levels, levels
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
    assert not any(r["logger"] == "gunicorn.access" for r in records)

    access = {r["request_id"]: r for r in records if r["logger"] == "metamcp.access"}
    for reply, expect in client.sent:
        line = access.get(reply.headers["X-Request-Id"])
        assert line is not None, f"no access line for {reply.request.method} {reply.request.path_url}"
        assert line["status"] == reply.status_code and line["method"] == reply.request.method
        assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
        assert "?" not in line["path"] and "?" not in line["message"]
        for field, value in expect.items():
            assert line.get(field) == value, (field, line)
    # Records written while a request is served carry its id, also while its answer streams.
    served = [r for r in records if r.get("request_id") in access and r["logger"] != "metamcp.access"]
    assert any(r["logger"] == "metamcp.mcp.upstream.streamable" for r in served), served
    refused = [r for r in records if r["logger"] == "metamcp.mcp.streamed" and r["level"] == "WARNING"]
    assert refused and all(r.get("request_id") == failed_call for r in refused), refused


def message_text(client: Client, tool: str) -> str:
    """The answer the client got for its call of `tool`."""
    for reply, expect in client.sent:
        if expect.get("tool") == tool:
            return reply.text
    raise AssertionError(f"no call of {tool}")
