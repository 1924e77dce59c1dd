"""GET /api/v1/audit and /api/v1/usage, with the records real requests leave: calls of each
audited kind through the app to a real upstream, admin changes over REST (secrets masked),
filters, cursor pages, usage percentiles, bad input and access."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from metamcp import audit_repository, crypto, repository
from metamcp.audit import AuditLog
from metamcp.db import Database

from .upstreams import UpstreamProcess

ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    process = UpstreamProcess("aud").start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def quick_flush(monkeypatch: pytest.MonkeyPatch, db: Database) -> None:
    """Batches written every 50 ms (the apps below are made after this), on an empty log."""
    monkeypatch.setattr(AuditLog, "FLUSH_SECONDS", 0.05)
    with db.transaction() as cur:
        cur.execute("TRUNCATE audit_log")


def rows(db: Database, where: str = "TRUE", wait_for: int = 0) -> list[dict[str, Any]]:
    """The log's rows (oldest first), waiting (bounded) until at least `wait_for` match."""
    deadline = time.monotonic() + 5
    while True:
        with db.transaction() as cur:
            cur.execute(f"SELECT * FROM audit_log WHERE {where} ORDER BY id")  # noqa: S608
            found = [dict(r) for r in cur.fetchall()]
        if len(found) >= wait_for or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


class Mcp:
    """A 2025-11-25 session over the app's /mcp."""

    def __init__(self, client: FlaskClient, key: str) -> None:
        self.client, self.key, self.session, self.ids = client, key, "", 0

    def post(self, method: str, params: dict[str, Any]) -> str:
        self.ids += 1
        headers = {"X-API-Key": self.key, "Accept": ACCEPT, "Content-Type": "application/json"}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        reply = self.client.post("/mcp", headers=headers, data=json.dumps(
            {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}))
        body = reply.get_data(as_text=True)
        reply.close()  # what the WSGI server does once it is sent: the observation ends
        self.session = self.session or reply.headers.get("Mcp-Session-Id", "")
        return body

    def initialize(self) -> Mcp:
        self.post("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}})
        return self


def register(client: FlaskClient, key: str, upstream: UpstreamProcess, **extra: Any) -> dict[str, Any]:
    reply = client.post("/api/v1/mcp/servers", headers={"X-API-Key": key}, json={
        "name": upstream.name, "transport": "streamable_http", "url": upstream.url, **extra})
    assert reply.status_code == 201, reply.get_json()
    return dict(reply.get_json())


def get(client: FlaskClient, credential: str, path: str, **query: Any) -> Any:
    return client.get(path, headers={"X-API-Key": credential}, query_string=query)


def test_calls_of_each_audited_kind_are_recorded(client: FlaskClient, api_key: str, db: Database,
                                                upstream: UpstreamProcess) -> None:
    register(client, api_key, upstream)
    mcp = Mcp(client, api_key).initialize()
    assert "slept" in mcp.post("tools/call", {"name": "aud__slow", "arguments": {"seconds": 0.05}})
    mcp.post("tools/call", {"name": "aud__fail", "arguments": {}})
    mcp.post("tools/call", {"name": "nope__x", "arguments": {}})
    assert "greet" in mcp.post("prompts/get", {"name": "aud__greet", "arguments": {"name": "Ada"}})
    assert '"contents"' in mcp.post("resources/read", {"uri": "test://aud/info"})
    mcp.post("tools/list", {})
    calls = rows(db, "kind = 'call'", wait_for=5)
    assert [(r["action"], r["target"], r["outcome"], r["error_code"]) for r in calls] == [
        ("tools/call", "aud__slow", "ok", None), ("tools/call", "aud__fail", "tool_error", None),
        ("tools/call", "nope__x", "error", -32602), ("prompts/get", "aud__greet", "ok", None),
        ("resources/read", "test://aud/info", "ok", None)]
    slow = calls[0]
    assert (slow["server"], slow["upstream_name"], slow["session_id"], slow["key_name"]) == (
        "aud", "slow", mcp.session, "test")
    assert slow["duration_ms"] >= slow["upstream_ms"] >= 50 and slow["bytes"] > 0
    assert all(r["duration_ms"] > 0 and r["bytes"] > 0 and r["actor"] == "key" for r in calls)
    assert calls[2]["server"] is None  # an unknown name is never routed
    assert len({r["request_id"] for r in calls}) == 5


SECRETS = ("bearer-secret-0123456789", "header-secret-0123456789", "env-secret-0123456789")


def test_admin_changes_are_recorded_with_secrets_masked(client: FlaskClient, api_key: str, db: Database,
                                                       upstream: UpstreamProcess) -> None:
    headers = {"X-API-Key": api_key, "X-Request-Id": "change-1"}
    server = register(client, api_key, upstream, bearer_token=SECRETS[0], headers={"X-Up": SECRETS[1]})
    assert client.patch(f"/api/v1/mcp/servers/{server['id']}", headers=headers,
                        json={"headers": {"X-Up": "header-secret-9876543210"}, "description": "d"}).status_code == 200
    stdio = client.post("/api/v1/mcp/servers", headers=headers, json={
        "name": "child", "transport": "stdio", "command": "cat", "env": {"TOKEN": SECRETS[2]},
        "is_active": False})
    assert stdio.status_code == 201, stdio.get_json()
    assert client.post("/api/v1/mcp/servers", headers=headers, json={  # refused: no record
        "name": "aud", "transport": "streamable_http", "url": upstream.url}).status_code == 409
    namespace = client.post("/api/v1/namespaces", headers=headers, json={"name": "team"}).get_json()
    assert client.put(f"/api/v1/namespaces/{namespace['id']}/servers/{server['id']}", headers=headers,
                      json={"status": "active"}).status_code == 200
    Mcp(client, api_key).initialize().post("tools/list", {})  # the tools table learns aud's tools
    tools = client.get(f"/api/v1/namespaces/{namespace['id']}/tools", headers=headers).get_json()["tools"]
    echo = next(t for t in tools if t["original_name"] == "echo")
    assert client.patch(f"/api/v1/namespaces/{namespace['id']}/tools/{echo['id']}", headers=headers,
                        json={"status": "inactive", "name": "say"}).status_code == 200
    endpoint = client.post("/api/v1/endpoints", headers=headers,
                           json={"name": "team", "namespace_id": namespace["id"]}).get_json()
    assert client.patch(f"/api/v1/endpoints/{endpoint['id']}", headers=headers,
                        json={"auth": {"api_key": False}}).status_code == 200
    created = client.post("/api/v1/keys", headers=headers, json={"name": "bot", "role": "client"}).get_json()
    assert client.delete(f"/api/v1/keys/{created['id']}", headers=headers).status_code == 204
    assert client.delete(f"/api/v1/endpoints/{endpoint['id']}", headers=headers).status_code == 204
    assert client.delete(f"/api/v1/mcp/servers/{stdio.get_json()['id']}", headers=headers).status_code == 204
    assert client.delete(f"/api/v1/namespaces/{namespace['id']}/servers/{server['id']}",
                         headers=headers).status_code == 204
    assert client.patch(f"/api/v1/namespaces/{namespace['id']}", headers=headers,
                        json={"name": "crew"}).status_code == 200
    assert client.delete(f"/api/v1/namespaces/{namespace['id']}", headers=headers).status_code == 204

    changes = rows(db, "kind = 'admin'")
    assert [r["action"] for r in changes] == [
        "server.create", "server.update", "server.create", "namespace.create", "namespace.attach",
        "namespace.tools", "endpoint.create", "endpoint.update", "key.create", "key.delete", "endpoint.delete",
        "server.delete", "namespace.detach", "namespace.update", "namespace.delete"]
    assert all(r["actor"] == "key" and r["key_name"] == "test" and r["key_id"] for r in changes)
    assert changes[1]["request_id"] == "change-1" and changes[1]["target"] == server["id"]
    update = changes[1]
    assert update["before"]["headers"] == {"X-Up": "***"} and update["after"]["bearer_token"] == "***"
    assert (update["before"]["description"], update["after"]["description"]) == ("", "d")
    assert changes[2]["after"]["env"] == {"TOKEN": "***"} and changes[0]["before"] is None
    assert changes[7]["before"]["auth_api_key"] is True and changes[7]["after"]["auth_api_key"] is False
    assert changes[4]["server"] == "aud" and changes[4]["after"]["servers"][0]["name"] == "aud"
    tool = changes[5]
    assert (tool["before"][echo["id"]]["status"], tool["after"][echo["id"]]["status"]) == ("active", "inactive")
    assert (tool["before"][echo["id"]]["name"], tool["after"][echo["id"]]["name"]) == (None, "say")
    assert changes[9]["before"]["name"] == "bot" and changes[9]["after"] is None
    assert changes[12]["before"]["servers"] and changes[12]["after"]["servers"] == []
    assert (changes[13]["before"]["name"], changes[13]["after"]["name"]) == ("team", "crew")
    assert changes[14]["before"]["name"] == "crew" and changes[14]["after"] is None
    with db.transaction() as cur:  # the secrets, sealed or in clear, and the new key: nowhere
        cur.execute("SELECT string_agg(concat(before::text, after::text), ' ') AS text FROM audit_log")
        text = cur.fetchone()["text"]
        cur.execute("SELECT bearer_token, headers::text AS h FROM mcp_servers WHERE name = 'aud'")
        sealed = dict(cur.fetchone())
    for secret in (*SECRETS, "header-secret-9876543210", created["key"], sealed["bearer_token"]):
        assert secret not in text
    assert "****" not in text  # not even the API's masked tail of a secret
    listed = get(client, api_key, "/api/v1/audit", kind="admin", tool=stdio.get_json()["id"]).get_json()["entries"]
    assert [e["action"] for e in listed] == ["server.delete", "server.create"]
    assert listed[0]["before"]["env"] == {"TOKEN": "***"}


def test_audit_off_records_nothing(app: Flask, settings: Any, db: Database, api_key: str,
                                   upstream: UpstreamProcess) -> None:
    from dataclasses import replace

    from metamcp.app import create_app

    quiet = create_app(replace(settings, audit=False), listen=False)
    try:
        client = quiet.test_client()
        register(client, api_key, upstream)
        Mcp(client, api_key).initialize().post("tools/call", {"name": "aud__echo", "arguments": {"message": "x"}})
        time.sleep(0.2)
        assert rows(db) == [] and quiet.extensions["metamcp"].audit is None
    finally:
        quiet.extensions["metamcp"].close()


def synthetic(db: Database, n: int) -> None:
    """n call records a second apart, the newest now: keys 1-3, servers a/b, every third an error."""
    now = time.time()
    records = [(now - (n - i), "call", "key", i % 3 + 1, f"k{i % 3 + 1}", f"r{i}", None, None, "tools/call",
                "ab"[i % 2], f"{'ab'[i % 2]}__t{i % 4}", f"t{i % 4}", "error" if i % 3 == 0 else "ok",
                -32603 if i % 3 == 0 else None, 200, float(i), 0.5, 10, "h", 1) for i in range(n)]
    with db.transaction() as cur:
        audit_repository.insert_calls(cur, records)


def test_filters_and_cursor_pages(client: FlaskClient, api_key: str, db: Database) -> None:
    synthetic(db, 25)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = get(client, api_key, "/api/v1/audit", **query).get_json()
        seen += [e["request_id"] for e in page["entries"]]
        pages += 1
        if pages == 1:
            synthetic(db, 1)  # a newer record meanwhile shifts no page (keyset on at, id)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == [f"r{i}" for i in range(24, -1, -1)]
    assert get(client, api_key, "/api/v1/audit").get_json()["entries"][0]["request_id"] == "r0"  # the newest

    def ids(**query: Any) -> list[str]:
        reply = get(client, api_key, "/api/v1/audit", **query)
        assert reply.status_code == 200, reply.get_json()
        return [e["request_id"] for e in reply.get_json()["entries"]]

    assert set(ids(key=2)) == {f"r{i}" for i in range(25) if i % 3 == 1}
    assert set(ids(server="a", outcome="error")) == {f"r{i}" for i in range(25) if i % 2 == 0 and i % 3 == 0}
    assert set(ids(tool="b__t3")) == {f"r{i}" for i in range(25) if i % 4 == 3}
    assert ids(kind="admin") == []
    middle = get(client, api_key, "/api/v1/audit", tool="a__t0").get_json()["entries"]
    since, until = middle[-2]["at"], middle[1]["at"]  # ISO 8601 as the API gives it
    window = ids(since=since, until=until)
    assert window and all(since <= e["at"] < until
                          for e in get(client, api_key, "/api/v1/audit", since=since, until=until).get_json()["entries"])
    assert len(ids(since=since[:19])) >= len(window)  # no zone: UTC


@pytest.mark.parametrize("query", [
    {"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"key": "abc"}, {"key": 0}, {"outcome": "fine"},
    {"kind": "other"}, {"since": "yesterday"}, {"until": "2026-13-01"}, {"cursor": "garbage"},
    {"cursor": "WzEsMl0"}, {"server": "a\nb"}, {"tool": "x\0y"}, {"unknown": "1"}])
def test_bad_filters_are_refused_as_json(client: FlaskClient, api_key: str, query: dict[str, Any]) -> None:
    reply = get(client, api_key, "/api/v1/audit", **query)
    assert reply.status_code == 422 and reply.get_json()["error"] == "validation_error", reply.get_json()


def test_only_admin_keys_read_the_log(client: FlaskClient, api_key: str, db: Database) -> None:
    new = crypto.generate_api_key()
    with db.transaction() as cur:
        repository.insert_key(cur, "client", new.hash, new.prefix, "client")
    for path in ("/api/v1/audit", "/api/v1/usage"):
        assert client.get(path, query_string={"by": "key"}).status_code == 401
        assert get(client, new.plain, path, by="key").status_code == 403
    for query in ({}, {"by": "day"}, {"by": "key", "since": "x"}, {"by": "key", "sort": "calls"}):
        reply = get(client, api_key, "/api/v1/usage", **query)
        assert reply.status_code == 422 and "error" in reply.get_json()
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"/api/v1/audit", "/api/v1/usage"} <= set(paths)


def test_usage_percentiles_match_known_durations(client: FlaskClient, api_key: str, db: Database,
                                                 upstream: UpstreamProcess,
                                                 make_key: Callable[..., tuple[int, str]]) -> None:
    register(client, api_key, upstream)
    mcp = Mcp(client, api_key).initialize()
    for seconds in (0.02,) * 6 + (0.25,) * 4:
        mcp.post("tools/call", {"name": "aud__slow", "arguments": {"seconds": seconds}})
    mcp.post("tools/call", {"name": "aud__fail", "arguments": {}})
    other = Mcp(client, make_key("other")[1]).initialize()
    other.post("tools/call", {"name": "aud__echo", "arguments": {"message": "hi"}})
    rows(db, "kind = 'call'", wait_for=12)
    by_tool = {g["tool"]: g for g in get(client, api_key, "/api/v1/usage", by="tool").get_json()["groups"]}
    slow = by_tool["aud__slow"]
    assert (slow["calls"], slow["errors"], slow["method"], slow["server"]) == (10, 0, "tools/call", "aud")
    assert 20 <= slow["p50_ms"] < 200, slow  # the median of six 20 ms and four 250 ms calls
    assert 250 <= slow["p95_ms"] < 700, slow
    assert (by_tool["aud__fail"]["errors"], by_tool["aud__fail"]["tool_errors"]) == (1, 1)
    by_key = {g["key_name"]: g for g in get(client, api_key, "/api/v1/usage", by="key").get_json()["groups"]}
    assert (by_key["test"]["calls"], by_key["other"]["calls"]) == (11, 1)
    [server] = get(client, api_key, "/api/v1/usage", by="server").get_json()["groups"]
    assert (server["server"], server["calls"], server["errors"]) == ("aud", 12, 1)
    later = get(client, api_key, "/api/v1/usage", by="server", since="2999-01-01T00:00:00Z").get_json()
    assert later["groups"] == []


def test_a_full_queue_never_delays_a_call(app: Flask, client: FlaskClient, api_key: str, db: Database,
                                          upstream: UpstreamProcess) -> None:
    """A burst of calls with a queue of two records and no writer to empty it: every record
    beyond two is dropped and counted, and the calls take as long as without the audit sink."""
    register(client, api_key, upstream)
    mcp = Mcp(client, api_key).initialize()
    echo = {"name": "aud__echo", "arguments": {"message": "x"}}

    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            assert "aud: x" in mcp.post("tools/call", echo)
            times.append(time.perf_counter() - started)
        return sorted(times)

    baseline = timed(15)
    tiny = AuditLog("postgresql://unused", queue_size=2)  # never started: nothing is written
    app.extensions["metamcp"].observers.add(tiny.sink)
    burst = timed(30)
    assert tiny.dropped == 28
    assert burst[15] < baseline[7] * 2 + 0.02, (baseline[7], burst[15])  # medians
    assert burst[-1] < 1.0
