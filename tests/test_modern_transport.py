"""2026-07-28 clients on /mcp and on an endpoint, beside 2025 sessions on the same URLs: the
ladder's answers (status, code, id), server/discover, complete results with caching hints,
removed methods, per-request logging, Mcp-Param headers, GET/DELETE 405, no database query on
a warm modern tools/list and tools/call (Flask test client, real PostgreSQL, an SDK upstream);
then subscriptions/listen on a live gunicorn (acknowledgement, tagged list_changed and resource
updates, the graceful end when the worker stops)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from metamcp import crypto, repository
from metamcp.db import Database
from metamcp.mcp.protocol import (
    META_CAPABILITIES,
    META_LOG_LEVEL,
    META_SERVER_INFO,
    META_SUBSCRIPTION,
    META_VERSION,
)

from .conftest import Gunicorn, TransactionCounter, child_env, free_port
from .upstreams import Log, UpstreamProcess
from .upstreams import start_upstream as start_upstream  # noqa: F401 - the fixture

VERSION = "2026-07-28"
ACCEPT = "application/json, text/event-stream"


def meta(**extra: Any) -> dict[str, Any]:
    return {META_VERSION: VERSION, META_CAPABILITIES: {}, **extra}


def modern_headers(method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": VERSION,
               "Mcp-Method": method, **extra}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def answer(reply: TestResponse | requests.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a reply sent as JSON or as an SSE stream (its last event)."""
    text = reply.get_data(as_text=True) if isinstance(reply, TestResponse) else reply.text
    if (reply.mimetype if isinstance(reply, TestResponse) else reply.headers["Content-Type"]).startswith(
            "application/json"):
        return dict(json.loads(text))
    return dict(json.loads([line for line in text.splitlines() if line.startswith("data:")][-1][5:]))


def sse_messages(reply: TestResponse) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in reply.get_data(as_text=True).splitlines() if line.startswith("data:")]


class Modern:
    """A 2026-07-28 client of one URL (Flask test client)."""

    def __init__(self, client: FlaskClient, url: str, key: str | None) -> None:
        self.client = client
        self.url = url
        self.auth = {} if key is None else {"X-API-Key": key}

    def post(self, method: str, params: dict[str, Any] | None = None, *, request_id: Any = 5,
             headers: dict[str, str] | None = None, name: str | None = None,
             **meta_extra: Any) -> TestResponse:
        params = {"_meta": meta(**meta_extra), **(params or {})}
        if name is None and method in ("tools/call", "prompts/get"):
            name = params.get("name")
        if name is None and method == "resources/read":
            name = params.get("uri")
        sent = {**modern_headers(method, name), **self.auth, **(headers or {})}
        return self.client.post(self.url, headers=sent,
                                json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


@pytest.fixture
def gateway(client: FlaskClient, api_key: str,
            start_upstream: Callable[..., UpstreamProcess]) -> dict[str, Any]:  # noqa: F811
    """An SDK upstream "up" registered, in a namespace behind a public endpoint "pub"."""
    upstream = start_upstream("up", extra_args=("--uri-host", "up"))
    admin = {"X-API-Key": api_key}
    server = client.post("/api/v1/mcp/servers", headers=admin, json={
        "name": "up", "transport": "streamable_http", "url": upstream.url})
    assert server.status_code == 201, server.json
    ns = client.post("/api/v1/namespaces", headers=admin, json={"name": "pubns", "naming": "original"}).json["id"]
    assert client.put(f"/api/v1/namespaces/{ns}/servers/{server.json['id']}", headers=admin,
                      json={"status": "active"}).status_code == 200
    assert client.post("/api/v1/endpoints", headers=admin, json={
        "name": "pub", "namespace_id": ns, "auth": {"api_key": False}}).status_code == 201
    return {"key": api_key, "upstream": upstream}


@pytest.fixture
def mcp(client: FlaskClient, gateway: dict[str, Any]) -> Modern:
    return Modern(client, "/mcp", gateway["key"])


@pytest.fixture
def public(client: FlaskClient, gateway: dict[str, Any]) -> Modern:
    return Modern(client, "/metamcp/pub/mcp", None)


def error(reply: TestResponse) -> tuple[int, int, Any]:
    body = reply.json
    assert body is not None and "error" in body, reply.get_data(as_text=True)
    return reply.status_code, body["error"]["code"], body["id"]


def test_a_2026_request_takes_the_same_key_and_role_checks(client: FlaskClient, gateway: dict[str, Any]) -> None:
    """No session is no shortcut past authorization: client keys are served on /mcp (and refused
    by the admin API), a key limited to namespaces is refused on /mcp, no or a bad key is 401."""
    admin = {"X-API-Key": gateway["key"]}
    plain = client.post("/api/v1/keys", headers=admin, json={"name": "agent", "role": "client"}).json["key"]
    scoped = client.post("/api/v1/keys", headers=admin,
                         json={"name": "bot", "role": "client", "namespaces": ["pubns"]}).json["key"]
    assert Modern(client, "/mcp", None).post("tools/list").status_code == 401
    assert Modern(client, "/mcp", "mcp_not-a-key").post("tools/list").status_code == 401
    served = Modern(client, "/mcp", plain).post("tools/list")
    assert served.status_code == 200 and served.json["result"]["resultType"] == "complete"
    assert client.get("/api/v1/mcp/servers", headers={"X-API-Key": plain}).status_code == 403
    refused = Modern(client, "/mcp", scoped).post("tools/list")
    assert refused.status_code == 403 and "namespaces" in refused.json["error"]["message"]


def test_discover_says_what_is_spoken(mcp: Modern, public: Modern) -> None:
    reply = mcp.post("server/discover")
    assert reply.status_code == 200 and "Mcp-Session-Id" not in reply.headers
    result = reply.json["result"]
    assert reply.json["id"] == 5
    assert result["supportedVersions"][0] == VERSION and "2025-11-25" in result["supportedVersions"]
    assert result["resultType"] == "complete" and result["_meta"][META_SERVER_INFO]["name"] == "metamcp"
    assert set(result["capabilities"]) == {"tools", "prompts", "resources", "completions", "logging"}
    assert "subscribe" not in result["capabilities"]["resources"]
    assert result["ttlMs"] > 0 and result["cacheScope"] == "private"
    assert "MetaMCP" in result["instructions"]
    assert public.post("server/discover").json["result"]["cacheScope"] == "public"



def test_the_ladder_answers_with_status_code_and_the_request_id(mcp: Modern, client: FlaskClient) -> None:
    # _meta without the version or the capabilities: 400 -32602.
    bare = client.post("/mcp", headers={**modern_headers("tools/list"), **mcp.auth},
                       json={"jsonrpc": "2.0", "id": "x", "method": "tools/list", "params": {}})
    assert error(bare) == (400, -32602, "x")
    lacking = client.post("/mcp", headers={**modern_headers("tools/list"), **mcp.auth}, json={
        "jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"_meta": {META_VERSION: VERSION}}})
    assert error(lacking) == (400, -32602, 9)
    # Headers that disagree with the body, or are missing: 400 -32020.
    assert error(mcp.post("tools/list", headers={"Mcp-Method": "prompts/list"})) == (400, -32020, 5)
    assert error(mcp.post("tools/call", {"name": "echo", "arguments": {"message": "x"}}, name="other")) == \
        (400, -32020, 5)
    no_method = client.post("/mcp", headers={**modern_headers("tools/list"), **mcp.auth, "Mcp-Method": ""},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta()}})
    assert error(no_method)[:2] == (400, -32020)
    # A version we do not speak: 400 -32022 naming ours.
    other = {**modern_headers("tools/list"), **mcp.auth, "MCP-Protocol-Version": "2099-01-01"}
    unsupported = client.post("/mcp", headers=other, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                                                           "params": {"_meta": meta(**{META_VERSION: "2099-01-01"})}})
    assert error(unsupported) == (400, -32022, 2)
    assert unsupported.json["error"]["data"] == {"supported": [VERSION], "requested": "2099-01-01"}
    # An invalid log level: -32602.
    assert error(mcp.post("tools/list", **{META_LOG_LEVEL: "loud"})) == (400, -32602, 5)
    # Batches and posted responses have no place in 2026-07-28.
    batch = client.post("/mcp", headers={**modern_headers("tools/list"), **mcp.auth}, json=[{"jsonrpc": "2.0"}])
    assert batch.status_code == 400 and batch.json["error"]["code"] == -32600


@pytest.mark.parametrize("method", ["ping", "initialize", "logging/setLevel", "resources/subscribe",
                                    "resources/unsubscribe", "no/such"])
def test_removed_and_unknown_methods_are_404(mcp: Modern, method: str) -> None:
    assert error(mcp.post(method, {"uri": "test://up/info"} if "subscribe" in method else {})) == (404, -32601, 5)


def test_notifications_are_accepted_and_dropped(mcp: Modern, client: FlaskClient) -> None:
    headers = {**modern_headers("notifications/cancelled"), **mcp.auth}
    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
    assert client.post("/mcp", headers=headers, json=note).status_code == 202
    refused = client.post("/mcp", headers={**headers, "MCP-Protocol-Version": "2099-01-01"}, json=note)
    assert error(refused) == (400, -32022, None)


def test_lists_are_complete_with_caching_hints(mcp: Modern, public: Modern) -> None:
    reply = mcp.post("tools/list")
    result = reply.json["result"]
    assert reply.status_code == 200 and "up__echo" in [tool["name"] for tool in result["tools"]]
    assert result["resultType"] == "complete" and result["_meta"][META_SERVER_INFO]["name"] == "metamcp"
    assert 0 < result["ttlMs"] <= 300_000 and result["cacheScope"] == "private"
    time.sleep(0.3)
    again = mcp.post("tools/list").json["result"]
    assert again["ttlMs"] <= result["ttlMs"] - 250  # the remaining freshness of the same cached list
    for method, key in (("prompts/list", "prompts"), ("resources/list", "resources"),
                        ("resources/templates/list", "resourceTemplates")):
        listed = public.post(method).json["result"]
        assert key in listed and listed["cacheScope"] == "public" and listed["ttlMs"] >= 0, (method, listed)
    assert "echo" in [tool["name"] for tool in public.post("tools/list").json["result"]["tools"]]


def test_reads_prompts_and_completions_are_complete(mcp: Modern) -> None:
    read = mcp.post("resources/read", {"uri": "test://up/info"})
    assert read.status_code == 200, read.json
    result = read.json["result"]
    assert result["resultType"] == "complete" and result["ttlMs"] == 0 and result["cacheScope"] == "private"
    assert "up" in json.dumps(result["contents"])
    prompt = mcp.post("prompts/get", {"name": "up__greet", "arguments": {"name": "Ada"}}).json["result"]
    assert prompt["resultType"] == "complete" and "Ada" in json.dumps(prompt["messages"])
    missing = mcp.post("resources/read", {"uri": "test://nowhere/x"})
    assert error(missing) == (400, -32602, 5)
    assert missing.json["error"]["data"] == {"uri": "test://nowhere/x"}


def test_tools_call_streams_and_answers_json(mcp: Modern) -> None:
    """A call whose response comes first is answered as JSON (an error with its HTTP status); one
    that says something first is streamed; a JSON-only client gets the response alone."""
    quick = mcp.post("tools/call", {"name": "up__echo", "arguments": {"message": "hi"}})
    assert quick.mimetype == "application/json"
    assert quick.json["id"] == 5 and quick.json["result"]["resultType"] == "complete"
    assert quick.json["result"]["content"][0]["text"] == "up: hi"
    streamed = mcp.post("tools/call", {"name": "up__progress", "arguments": {"steps": 2}}, progressToken="p")
    assert streamed.mimetype == "text/event-stream"
    messages = sse_messages(streamed)
    assert [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"] == [1, 2]
    assert messages[-1]["id"] == 5 and messages[-1]["result"]["resultType"] == "complete"
    as_json = mcp.post("tools/call", {"name": "up__progress", "arguments": {"steps": 2}},
                       headers={"Accept": "application/json"})
    assert as_json.mimetype == "application/json" and as_json.json["result"]["content"][0]["text"] == "done"
    unknown = mcp.post("tools/call", {"name": "up__nope", "arguments": {}})
    assert error(unknown) == (400, -32602, 5)


def test_logs_only_when_the_request_asks_for_a_level(mcp: Modern) -> None:
    params = {"name": "up__progress", "arguments": {"steps": 2}}
    quiet = mcp.post("tools/call", params)  # nothing said before the response: JSON
    assert quiet.mimetype == "application/json" and quiet.json["result"]["content"][0]["text"] == "done"
    loud = sse_messages(mcp.post("tools/call", params, **{META_LOG_LEVEL: "debug"}))
    assert [m["params"]["data"] for m in loud if m.get("method") == "notifications/message"] == ["step 1", "step 2"]
    above = mcp.post("tools/call", params, **{META_LOG_LEVEL: "error"})
    assert above.mimetype == "application/json" and above.json["result"]["content"][0]["text"] == "done"


def test_mcp_param_headers_must_match_the_arguments(public: Modern, client: FlaskClient,
                                                    gateway: dict[str, Any]) -> None:
    """The echo tool's schema has no x-mcp-header: nothing to check; the check itself is unit
    tested in tests/test_inbound.py, and the conformance suite runs it through an endpoint."""
    ok = public.post("tools/call", {"name": "echo", "arguments": {"message": "x"}},
                     headers={"Mcp-Param-Region": "anything"})
    assert answer(ok)["result"]["content"][0]["text"] == "up: x"


def test_get_and_delete_are_405_for_2026_and_unchanged_for_2025(mcp: Modern, client: FlaskClient) -> None:
    for method in (client.get, client.delete):
        refused = method("/mcp", headers={**mcp.auth, "MCP-Protocol-Version": VERSION, "Accept": ACCEPT})
        assert refused.status_code == 405 and refused.headers["Allow"] == "POST"
        assert refused.json["error"]["code"] == -32600
    legacy = client.get("/mcp", headers={**mcp.auth, "Accept": "text/event-stream"})
    assert legacy.status_code == 400 and "Mcp-Session-Id" in legacy.json["error"]["message"]


def test_a_2025_session_on_the_same_url_is_untouched(mcp: Modern, client: FlaskClient) -> None:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json", **mcp.auth}
    init = client.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    session = {**headers, "Mcp-Session-Id": init.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
    listed = client.post("/mcp", headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).json
    assert "ttlMs" not in listed["result"] and "resultType" not in listed["result"]
    pong = client.post("/mcp", headers=session, json={"jsonrpc": "2.0", "id": 3, "method": "ping"})
    assert pong.json == {"jsonrpc": "2.0", "id": 3, "result": {}}
    # A session id wins over a 2026 header: the 2025 path (its version check) answers.
    mixed = client.post("/mcp", headers={**session, "MCP-Protocol-Version": VERSION},
                        json={"jsonrpc": "2.0", "id": 4, "method": "ping"})
    assert mixed.status_code == 400 and mixed.json["error"]["code"] == -32600


def test_no_database_query_on_a_warm_modern_list_and_call(app: Flask, mcp: Modern, public: Modern) -> None:
    def run_all() -> None:
        for client in (mcp, public):
            assert client.post("tools/list").status_code == 200
            prefix = "up__" if client is mcp else ""
            called = answer(client.post("tools/call", {"name": f"{prefix}echo", "arguments": {"message": "w"}}))
            assert called["result"]["content"][0]["text"] == "up: w", called

    run_all()  # warm: the key, the endpoint, the view, the lists, the upstream session
    transactions = TransactionCounter(app.extensions["metamcp"].db)
    for _ in range(3):
        run_all()
    assert transactions.count == 0


# --- subscriptions/listen on a live gunicorn -----------------------------------------------

@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db = Database(database_url, 1)
    with db.transaction() as cur:
        cur.execute("TRUNCATE api_keys, mcp_servers, mcp_sessions RESTART IDENTITY CASCADE")
        new = crypto.generate_api_key()
        repository.insert_key(cur, "listen", new.hash, new.prefix, "admin")
    log_path = tmp_path_factory.mktemp("upstream") / "sub.log"
    upstream = UpstreamProcess(name="sub", log_file=log_path, extra_args=("--subscriptions",))
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="2", METAMCP_KEEPALIVE_SECONDS="0.5", METAMCP_RATE_LIMIT="0")
    gunicorn = Gunicorn(env, free_port())
    try:
        upstream.start()
        gunicorn.wait_ready()
        created = requests.post(gunicorn.url + "/api/v1/mcp/servers", headers={"X-API-Key": new.plain},
                                json={"name": "sub", "transport": "streamable_http", "url": upstream.url}, timeout=30)
        assert created.status_code == 201, created.text
        yield {"gunicorn": gunicorn, "key": new.plain, "log": Log(log_path)}
    finally:
        gunicorn.stop()
        Path(gunicorn.log.name).unlink(missing_ok=True)
        upstream.stop()
        db.close()


class Listen:
    """A subscriptions/listen stream (raw SSE), read for a bounded time."""

    def __init__(self, url: str, key: str, request_id: Any, notifications: Any) -> None:
        self.response = requests.post(
            url + "/mcp", stream=True, timeout=30,
            headers={**modern_headers("subscriptions/listen"), "X-API-Key": key},
            json={"jsonrpc": "2.0", "id": request_id, "method": "subscriptions/listen",
                  "params": {"_meta": meta(), "notifications": notifications}})
        self._lines = self.response.iter_lines(decode_unicode=True)

    def messages(self, seconds: float, until: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        for line in self._lines:
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]))
                if until is not None and until(seen[-1]):
                    break
            if time.monotonic() > deadline:
                break
        return seen

    def close(self) -> None:
        self.response.close()


def call(live: dict[str, Any], name: str) -> dict[str, Any]:
    reply = requests.post(live["gunicorn"].url + "/mcp", timeout=30,
                          headers={**modern_headers("tools/call", name), "X-API-Key": live["key"]},
                          json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"_meta": meta(), "name": name, "arguments": {}}})
    return answer(reply)


def test_listen_acknowledges_then_sends_only_what_was_asked_tagged(live: dict[str, Any]) -> None:
    url, key = live["gunicorn"].url, live["key"]
    counter = "test://sub/counter"
    resources = Listen(url, key, "r1", {"resourceSubscriptions": [counter, "test://nowhere/x"]})
    tools = Listen(url, key, 7, {"toolsListChanged": True, "promptsListChanged": False})
    try:
        assert resources.response.status_code == 200
        assert resources.response.headers["Content-Type"].startswith("text/event-stream")
        ack = resources.messages(5, until=lambda m: True)[0]
        assert ack == {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                       "params": {"_meta": {META_SUBSCRIPTION: "r1"},
                                  "notifications": {"resourceSubscriptions": [counter]}}}
        assert tools.messages(5, until=lambda m: True)[0]["params"] == {
            "_meta": {META_SUBSCRIPTION: 7}, "notifications": {"toolsListChanged": True}}
        assert "1" in json.dumps(call(live, "sub__bump"))
        got = resources.messages(10, until=lambda m: m.get("method") == "notifications/resources/updated")
        assert got[-1] == {"jsonrpc": "2.0", "method": "notifications/resources/updated",
                           "params": {"uri": counter, "_meta": {META_SUBSCRIPTION: "r1"}}}
        call(live, "sub__notify_changed")  # tools/list_changed, heard by the gateway's client
        changed = tools.messages(10, until=lambda m: m.get("method", "").endswith("list_changed"))
        assert changed[-1] == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                               "params": {"_meta": {META_SUBSCRIPTION: 7}}}
        # Not asked for: the resource stream gets no list_changed.
        assert [m for m in resources.messages(1.5) if m.get("method", "").endswith("list_changed")] == []
    finally:
        resources.close()
        tools.close()


def test_closing_a_streamed_call_cancels_it_upstream(live: dict[str, Any]) -> None:
    """A call silent past a keep-alive period is streamed (keep-alives); the client leaving
    closes the upstream call."""
    log: Log = live["log"]
    log.mark()
    reply = requests.post(live["gunicorn"].url + "/mcp", stream=True, timeout=30,
                          headers={**modern_headers("tools/call", "sub__slow"), "X-API-Key": live["key"]},
                          json={"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                                "params": {"_meta": meta(), "name": "sub__slow", "arguments": {"seconds": 30}}})
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    assert log.wait_for("slow start")
    reply.close()
    assert log.wait_for("slow cancelled", timeout=10)


def test_listen_refuses_a_malformed_filter_and_json_only_clients(live: dict[str, Any]) -> None:
    url, key = live["gunicorn"].url, live["key"]
    bad = requests.post(url + "/mcp", timeout=30, headers={**modern_headers("subscriptions/listen"), "X-API-Key": key},
                        json={"jsonrpc": "2.0", "id": 3, "method": "subscriptions/listen",
                              "params": {"_meta": meta(), "notifications": {"toolsListChanged": "yes"}}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == -32602 and bad.json()["id"] == 3
    json_only = requests.post(url + "/mcp", timeout=30, headers={
        **modern_headers("subscriptions/listen"), "X-API-Key": key, "Accept": "application/json"},
        json={"jsonrpc": "2.0", "id": 4, "method": "subscriptions/listen", "params": {"_meta": meta()}})
    assert json_only.status_code == 406 and json_only.json()["id"] == 4


def test_a_stopping_worker_ends_the_subscription_with_a_result(database_url: str,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    db = Database(database_url, 1)
    with db.transaction() as cur:
        new = crypto.generate_api_key()
        repository.insert_key(cur, "stop", new.hash, new.prefix, "admin")
    db.close()
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("stop")),
                    METAMCP_WORKERS="1", METAMCP_KEEPALIVE_SECONDS="0.5")
    gunicorn = Gunicorn(env, free_port())
    try:
        gunicorn.wait_ready()
        stream = Listen(gunicorn.url, new.plain, 11, {"toolsListChanged": True})
        assert stream.messages(5, until=lambda m: True)[0]["method"] == "notifications/subscriptions/acknowledged"
        gunicorn.proc.send_signal(signal.SIGTERM)
        end = stream.messages(20, until=lambda m: "result" in m)
        assert end[-1] == {"jsonrpc": "2.0", "id": 11,
                           "result": {"resultType": "complete", "_meta": {META_SUBSCRIPTION: 11}}}
        stream.close()
    finally:
        gunicorn.stop()
        Path(gunicorn.log.name).unlink(missing_ok=True)
