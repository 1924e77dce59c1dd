"""The request's record (metamcp.observe): the pure parts, then what a real request through the
app leaves in it (real database, a real upstream over HTTP)."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from metamcp import observe
from metamcp.observe import ERROR, OK, TOOL_ERROR, Observation, Observers, Operation

from .upstreams import UpstreamProcess

ACCEPT = "application/json, text/event-stream"


def test_request_ids_are_kept_when_sane_and_made_otherwise() -> None:
    assert observe.request_id("abc-123_X.y:z") == "abc-123_X.y:z"
    for bad in (None, "", "x" * 129, "has space", "new\nline", "ü"):
        made = observe.request_id(bad)
        assert made != bad and len(made) == 16 and int(made, 16) >= 0
    assert observe.request_id(None) != observe.request_id(None)


def test_operation_outcomes_and_upstream_time() -> None:
    op = Operation("tools/call", "s__t")
    op.upstream_ended()  # never started: nothing counted
    assert op.upstream_seconds == 0
    op.upstream_started()
    time.sleep(0.02)
    op.upstream_ended()
    op.upstream_ended()  # counted once
    assert 0.02 <= op.upstream_seconds < 0.5
    op.answered({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": True}})
    assert (op.outcome, op.error_code) == (TOOL_ERROR, None)
    op.answered({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "x"}})
    assert (op.outcome, op.error_code) == (ERROR, -32602)
    op.answered({"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "x"}})
    assert (op.outcome, op.error_code) == (ERROR, None)
    op.answered({"jsonrpc": "2.0", "id": 1, "result": {}})
    assert (op.outcome, op.error_code) == (OK, None)


def test_outside_a_request_operations_are_not_recorded_and_a_failing_sink_costs_nothing() -> None:
    observe.begin(None)
    assert observe.operation("ping").method == "ping"
    observation = Observation("id", "POST", "/mcp", "/mcp", "127.0.0.1")
    observe.begin(observation)
    try:
        observe.operation("tools/call", "a__b")
        observe.operation("ping")
    finally:
        observe.begin(None)
    assert [op.method for op in observation.operations] == ["tools/call", "ping"]
    assert observation.mcp_method == "tools/call"
    seen: list[Observation] = []
    sinks = Observers()
    sinks.add(lambda _o: 1 / 0)  # type: ignore[func-returns-value]
    sinks.add(seen.append)
    sinks.finish(observation)
    assert seen == [observation] and observation.duration > 0


def post(client: FlaskClient, key: str, message: dict[str, Any], session: str | None = None,
         **headers: str) -> Any:
    sent = {"X-API-Key": key, "Accept": ACCEPT, "Content-Type": "application/json", **headers}
    if session:
        sent["Mcp-Session-Id"] = session
    return client.post("/mcp", data=json.dumps(message), headers=sent)


def test_a_request_through_the_app_is_recorded_once_answered(app: Flask, client: FlaskClient,
                                                             api_key: str) -> None:
    seen: list[Observation] = []
    app.extensions["metamcp"].observers.add(seen.append)
    upstream = UpstreamProcess("obs").start()
    try:
        created = client.post("/api/v1/mcp/servers", headers={"X-API-Key": api_key, "X-Request-Id": "admin-1"},
                              json={"name": "obs", "transport": "streamable_http", "url": upstream.url})
        created.close()  # what the WSGI server does once the response is sent
        assert created.status_code == 201 and created.headers["X-Request-Id"] == "admin-1"
        assert seen[-1].route == "/api/v1/mcp/servers" and seen[-1].status == 201 and seen[-1].key_name
        init = post(client, api_key, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        init.close()
        session = init.headers["Mcp-Session-Id"]
        assert seen[-1].mcp_method == "initialize" and seen[-1].session == session
        made_id = init.headers["X-Request-Id"]
        assert len(made_id) == 16 and seen[-1].request_id == made_id

        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "obs__slow", "arguments": {"seconds": 0.05}}}
        started = time.perf_counter()
        reply = post(client, api_key, call, session)
        body = reply.get_data(as_text=True)  # the stream, read to its end
        reply.close()
        total = time.perf_counter() - started
        assert "slept" in body or "0.05" in body, body
        record = seen[-1]
        assert (record.route, record.mcp_method, record.status, record.session) == ("/mcp", "tools/call", 200, session)
        [op] = record.operations
        assert (op.method, op.name, op.server, op.upstream_name, op.outcome) == (
            "tools/call", "obs__slow", "obs", "slow", OK)
        assert 0.05 <= op.upstream_seconds <= record.duration <= total
        assert record.bytes_out == len(body.encode())

        failed = post(client, api_key, {**call, "params": {"name": "obs__fail", "arguments": {}}}, session)
        failed.get_data()
        failed.close()
        assert seen[-1].operations[0].outcome == TOOL_ERROR
        unknown = post(client, api_key, {**call, "params": {"name": "nope__x"}}, session)
        unknown.close()
        [op] = seen[-1].operations
        assert (op.outcome, op.error_code, op.server) == (ERROR, -32602, None)
        refused = post(client, "mcp_not-a-key", call, session)
        refused.close()
        # Refused before its body is read: no method is known, no key, no operation.
        assert (seen[-1].status, seen[-1].mcp_method, seen[-1].key_id, seen[-1].operations) == (
            401, None, None, [])
    finally:
        upstream.stop()
