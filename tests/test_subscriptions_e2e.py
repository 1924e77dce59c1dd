"""Two gateway processes (two gunicorns of one worker each) on one database, a real SDK upstream
that offers subscriptions: resource updates reach only the subscribed session, on its GET
stream wherever it is held; unsubscribe stops them; a deleted session is 404 on the other
process at once; one registry change sends each list_changed once."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from mcp import Client
from mcp.types import ResourceUpdatedNotification

from metamcp import crypto, repository
from metamcp.db import Database

from .conftest import Gunicorn, child_env, free_port
from .mcp_client import run_client
from .upstreams import Log, UpstreamProcess

COUNTER = "test://sub/counter"
UPDATED = "notifications/resources/updated"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}


@dataclass
class Setup:
    a: Gunicorn
    b: Gunicorn
    key: str
    log: Log
    db: Database
    server_id: str
    env: dict[str, str]
    upstream: UpstreamProcess


@pytest.fixture(scope="module")
def setup(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    db = Database(database_url, 2)
    with db.transaction() as cur:
        cur.execute("TRUNCATE api_keys, mcp_servers, mcp_sessions RESTART IDENTITY CASCADE")
        new = crypto.generate_api_key()
        repository.insert_key(cur, "subs", new.hash, new.prefix, "admin")
    log_path = tmp_path_factory.mktemp("upstream") / "sub.log"
    upstream = UpstreamProcess(name="sub", log_file=log_path, extra_args=("--subscriptions",))
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="1", METAMCP_KEEPALIVE_SECONDS="0.5", METAMCP_RATE_LIMIT="0",
                    METAMCP_SUBSCRIPTION_CHECK_SECONDS="0.5")
    gateways: list[Gunicorn] = []
    try:
        upstream.start()
        for _ in range(2):  # one after the other: the first applies the migrations
            gateways.append(Gunicorn(env, free_port()))
            gateways[-1].wait_ready()
        created = requests.post(gateways[0].url + "/api/v1/mcp/servers", headers={"X-API-Key": new.plain},
                                json={"name": "sub", "transport": "streamable_http", "url": upstream.url},
                                timeout=30)
        assert created.status_code == 201, created.text
        yield Setup(gateways[0], gateways[1], new.plain, Log(log_path), db, created.json()["id"], env, upstream)
    finally:
        for gateway in gateways:
            gateway.stop()
            Path(gateway.log.name).unlink(missing_ok=True)
        upstream.stop()
        db.close()


def initialize(gateway: Gunicorn, key: str) -> dict[str, str]:
    """A new session (raw HTTP); returns its request headers."""
    reply = requests.post(gateway.url + "/mcp", headers={**HEADERS, "X-API-Key": key}, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert reply.status_code == 200, reply.text
    return {**HEADERS, "X-API-Key": key, "Mcp-Session-Id": reply.headers["Mcp-Session-Id"]}


def rpc(gateway: Gunicorn, headers: dict[str, str], method: str, params: dict[str, Any] | None = None) -> Any:
    reply = requests.post(gateway.url + "/mcp", headers=headers, timeout=30,
                          json={"jsonrpc": "2.0", "id": 2, "method": method, "params": params or {}})
    assert reply.status_code == 200, reply.text
    text = reply.text
    if reply.headers["Content-Type"].startswith("text/event-stream"):
        text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
    return json.loads(text)


class Stream:
    """A session's GET stream (raw SSE), read for a bounded time."""

    def __init__(self, gateway: Gunicorn, headers: dict[str, str]) -> None:
        self._response = requests.get(gateway.url + "/mcp", headers={**headers, "Accept": "text/event-stream"},
                                      stream=True, timeout=30)
        assert self._response.status_code == 200
        self._lines = self._response.iter_lines(decode_unicode=True)
        assert next(self._lines).startswith(":")  # open

    def messages(self, seconds: float, until: str | None = None) -> list[dict[str, Any]]:
        """The messages that arrive within `seconds` (keep-alives every 0.5 s move the loop)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        for line in self._lines:
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]))
                if until is not None and seen[-1].get("method") == until:
                    break
            if time.monotonic() > deadline:
                break
        return seen

    def close(self) -> None:
        self._response.close()


def each_for(streams: list[Stream], seconds: float) -> list[list[dict[str, Any]]]:
    """What each stream hears within the same `seconds`, the streams read side by side (one
    after the other, the window of each would start where the last one's ended)."""
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        return list(pool.map(lambda stream: stream.messages(seconds), streams))


def updates(messages: list[dict[str, Any]]) -> list[str]:
    return [m["params"]["uri"] for m in messages if m.get("method") == UPDATED]


def subscription_rows(db: Database, session_id: str) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM resource_subscriptions WHERE session_id = %s", (session_id,))
        row = cur.fetchone()
        return int(row["n"]) if row else 0


def holders(db: Database, session_id: str) -> list[str]:
    with db.transaction() as cur:
        cur.execute("SELECT holder FROM resource_subscriptions WHERE session_id = %s", (session_id,))
        return [row["holder"] for row in cur.fetchall()]


def test_initialize_declares_subscribe(setup: Setup) -> None:
    async def body(client: Client) -> Any:
        return client.server_capabilities.resources

    resources = run_client(setup.a.url + "/mcp", setup.key, body)
    assert resources is not None and resources.subscribe is True


def test_update_reaches_only_the_subscribed_session_wherever_its_stream_is(setup: Setup) -> None:
    subscribed, other = initialize(setup.a, setup.key), initialize(setup.a, setup.key)
    # The subscribed session's stream is held by B, the subscribe taken by A (which alone
    # subscribes upstream, and so hears the update); the other session's stream is on A.
    far, near = Stream(setup.b, subscribed), Stream(setup.a, other)
    try:
        assert rpc(setup.a, subscribed, "resources/subscribe", {"uri": COUNTER}) == {
            "jsonrpc": "2.0", "id": 2, "result": {}}
        assert subscription_rows(setup.db, subscribed["Mcp-Session-Id"]) == 1
        assert "1" in json.dumps(rpc(setup.b, other, "tools/call", {"name": "sub__bump", "arguments": {}}))
        assert updates(far.messages(10, until=UPDATED)) == [COUNTER]
        assert updates(near.messages(2)) == []  # not subscribed: nothing
        # Unsubscribed (on B, not the process holding it upstream): no more updates.
        setup.log.mark()
        assert rpc(setup.b, subscribed, "resources/unsubscribe", {"uri": COUNTER})["result"] == {}
        assert subscription_rows(setup.db, subscribed["Mcp-Session-Id"]) == 0
        rpc(setup.b, other, "tools/call", {"name": "sub__bump", "arguments": {}})
        assert updates(far.messages(2)) == []
        assert updates(near.messages(0.5)) == []
        # A, hearing an update nobody of its own wants any more, unsubscribes upstream: the
        # upstream speaks 2026-07-28, so A listens again without the URI (subscriptions/listen).
        assert setup.log.wait_for("subscriptions/listen []")
    finally:
        far.close()
        near.close()


def test_sdk_client_hears_updates_until_it_unsubscribes(setup: Setup) -> None:
    """The official client, subscribed on one process; the update is heard by its GET stream."""
    heard: list[str] = []

    async def handler(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            heard.append(str(message.params.uri))

    async def wait_for(count: int) -> None:
        with anyio.move_on_after(10):
            while len(heard) < count:
                await anyio.sleep(0.05)

    async def body(client: Client) -> list[str]:
        await client.subscribe_resource(COUNTER)
        await client.call_tool("sub__bump", {})
        await wait_for(1)
        await client.unsubscribe_resource(COUNTER)
        await client.call_tool("sub__bump", {})
        await anyio.sleep(1.5)
        return list(heard)

    got = run_client(setup.b.url + "/mcp", setup.key, body, message_handler=handler)
    assert got == [COUNTER]


def test_a_legacy_sse_client_hears_updates_on_its_stream(setup: Setup) -> None:
    """Legacy HTTP+SSE (an endpoint's /sse): the same mailbox carries the update to its stream."""
    auth = {"X-API-Key": setup.key}
    namespace = requests.post(setup.a.url + "/api/v1/namespaces", json={"name": "subs"}, headers=auth, timeout=30)
    assert namespace.status_code == 201, namespace.text
    namespace_id = namespace.json()["id"]
    assert requests.put(setup.a.url + f"/api/v1/namespaces/{namespace_id}/servers/{setup.server_id}",
                        json={"status": "active"}, headers=auth, timeout=30).status_code == 200
    assert requests.post(setup.a.url + "/api/v1/endpoints", headers=auth, timeout=30, json={
        "name": "subs", "namespace_id": namespace_id, "auth": {"api_key": True}}).status_code == 201
    heard: list[str] = []

    async def handler(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            heard.append(str(message.params.uri))

    async def body(client: Client) -> list[str]:
        await client.subscribe_resource(COUNTER)
        await client.call_tool("sub__bump", {})
        with anyio.move_on_after(10):
            while not heard:
                await anyio.sleep(0.05)
        return list(heard)

    assert run_client(setup.b.url + "/metamcp/subs/sse", setup.key, body, sse=True,
                      message_handler=handler) == [COUNTER]


def test_subscribe_to_an_unknown_resource_is_invalid_params(setup: Setup) -> None:
    session = initialize(setup.a, setup.key)
    reply = rpc(setup.a, session, "resources/subscribe", {"uri": "test://nowhere/at-all"})
    assert reply["error"]["code"] == -32602
    assert rpc(setup.a, session, "resources/subscribe", {})["error"]["code"] == -32602
    assert subscription_rows(setup.db, session["Mcp-Session-Id"]) == 0


def test_a_deleted_sessions_subscriptions_vanish(setup: Setup) -> None:
    session = initialize(setup.a, setup.key)
    assert rpc(setup.a, session, "resources/subscribe", {"uri": COUNTER})["result"] == {}
    assert subscription_rows(setup.db, session["Mcp-Session-Id"]) == 1
    assert requests.delete(setup.a.url + "/mcp", headers=session, timeout=30).status_code == 204
    assert subscription_rows(setup.db, session["Mcp-Session-Id"]) == 0


def test_deleted_session_is_404_on_the_other_process_at_once(setup: Setup) -> None:
    """Item 5: the other process had it cached (and is busy serving others); the very next
    request there, sent as soon as the DELETE is answered, is 404, never 200."""
    busy = initialize(setup.b, setup.key)
    stop = threading.Event()

    def keep_busy() -> None:  # other clients' requests keep B's threads (and the GIL) busy
        with requests.Session() as http:
            while not stop.is_set():
                http.post(setup.b.url + "/mcp", headers=busy, timeout=30,
                          json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"})

    ping = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"})
    on_a = http.client.HTTPConnection("127.0.0.1", setup.a.port, timeout=30)
    on_b = http.client.HTTPConnection("127.0.0.1", setup.b.port, timeout=30)

    def send(conn: http.client.HTTPConnection, method: str, headers: dict[str, str]) -> int:
        conn.request(method, "/mcp", body=ping if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status

    loaders = [threading.Thread(target=keep_busy) for _ in range(3)]
    for loader in loaders:
        loader.start()
    statuses = []
    try:
        for _ in range(20):
            session = initialize(setup.a, setup.key)
            assert send(on_b, "POST", session) == 200  # cached by B
            assert send(on_a, "DELETE", session) == 204
            statuses.append(send(on_b, "POST", session))
    finally:
        stop.set()
        for loader in loaders:
            loader.join(timeout=30)
        on_a.close()
        on_b.close()
    assert statuses == [404] * 20


def test_one_list_changed_per_change(setup: Setup) -> None:
    """Item 5: each list_changed once per change, on streams held by either process, both for a
    registry change and for an upstream's own list_changed (heard by both processes' clients)."""
    sessions = [initialize(setup.a, setup.key), initialize(setup.b, setup.key)]
    for gateway, session in zip((setup.a, setup.b), sessions, strict=True):
        rpc(gateway, session, "tools/list")  # both processes have a client of the upstream
    streams = [Stream(setup.a, sessions[0]), Stream(setup.b, sessions[1])]
    try:
        patched = requests.patch(setup.a.url + f"/api/v1/mcp/servers/{setup.server_id}", timeout=30,
                                 headers={"X-API-Key": setup.key}, json={"description": "changed"})
        assert patched.status_code == 200, patched.text
        for heard in each_for(streams, 2):
            methods = [m.get("method") for m in heard]
            assert sorted(methods) == ["notifications/prompts/list_changed",
                                       "notifications/resources/list_changed",
                                       "notifications/tools/list_changed"], methods
        for gateway, session in zip((setup.a, setup.b), sessions, strict=True):
            rpc(gateway, session, "tools/list")  # the new clients are made again
        rpc(setup.a, sessions[0], "tools/call", {"name": "sub__notify_changed", "arguments": {}})
        for heard in each_for(streams, 2):
            methods = [m.get("method") for m in heard]
            assert methods == ["notifications/tools/list_changed"], methods
        # An upstream that tells every session: both processes' clients hear it, once each.
        rpc(setup.a, sessions[0], "tools/call", {"name": "sub__notify_all_changed", "arguments": {}})
        for heard in each_for(streams, 2):
            methods = [m.get("method") for m in heard]
            assert methods == ["notifications/tools/list_changed"], methods
    finally:
        for stream in streams:
            stream.close()


def test_one_list_changed_per_kind_when_the_listener_reconnects(setup: Setup) -> None:
    """A listener that lost its connection resyncs (anything may have changed meanwhile): each
    list_changed once, not once per kind of cached data."""
    session = initialize(setup.a, setup.key)
    stream = Stream(setup.a, session)
    try:
        with setup.db.transaction() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name"
                        " LIKE 'metamcp-listener %' AND datname = current_database()")
            assert len(cur.fetchall()) == 2  # both processes' listeners
        methods = [m.get("method") for m in stream.messages(4)]
        assert sorted(methods) == ["notifications/prompts/list_changed", "notifications/resources/list_changed",
                                   "notifications/tools/list_changed"], methods
    finally:
        stream.close()


def test_a_gone_workers_subscriptions_are_adopted(setup: Setup, start_gunicorn: Callable[..., Gunicorn]) -> None:
    """The process that took (and held upstream) a subscription exits: another adopts it."""
    third = start_gunicorn(setup.env)
    session = initialize(third, setup.key)
    stream = Stream(setup.a, session)
    try:
        assert rpc(third, session, "resources/subscribe", {"uri": COUNTER})["result"] == {}
        gone = holders(setup.db, session["Mcp-Session-Id"])
        third.stop()
        deadline = time.monotonic() + 15
        while holders(setup.db, session["Mcp-Session-Id"]) == gone and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holders(setup.db, session["Mcp-Session-Id"]) not in (gone, [])  # adopted
        rpc(setup.a, session, "tools/call", {"name": "sub__bump", "arguments": {}})
        assert updates(stream.messages(10, until=UPDATED)) == [COUNTER]
        assert updates(stream.messages(1)) == []  # once
    finally:
        stream.close()


def test_subscriptions_survive_an_upstream_restart(setup: Setup) -> None:
    """The upstream restarts and forgets its sessions: the holder subscribes again on its new one."""
    session = initialize(setup.a, setup.key)
    stream = Stream(setup.b, session)
    try:
        assert rpc(setup.a, session, "resources/subscribe", {"uri": COUNTER})["result"] == {}
        setup.upstream.restart()
        heard: list[str] = []
        deadline = time.monotonic() + 20
        while not heard and time.monotonic() < deadline:  # until A's client is back and subscribed
            requests.post(setup.b.url + "/mcp", headers=session, timeout=30, json={
                "jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "sub__bump", "arguments": {}}})
            heard = updates(stream.messages(1, until=UPDATED))
        assert heard == [COUNTER]
    finally:
        stream.close()
