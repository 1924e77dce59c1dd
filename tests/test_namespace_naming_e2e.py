"""Namespaces naming tools and prompts as the upstreams do, prompts switched and renamed, and
names and URIs several servers list (the first server keeps them): live gunicorn, real SDK
upstreams (three of them listing the same URIs), a stdio server, the SDK as client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mcp import Client
from mcp.shared.exceptions import MCPError

from .conftest import ROOT, Gunicorn, child_env, free_port, fresh_keys
from .mcp_client import list_all, run_client
from .npm_packages import installed
from .upstreams import UpstreamProcess, start_all, stop_process

TOOLS_ONLY = ROOT / "tests" / "servers" / "tools_only_server.py"
#: The three test upstreams list the same resource URIs.
INFO = "test://shared/info"
#: The reference server, pinned (installed once into .cache/npm-everything).
EVERYTHING = ("@modelcontextprotocol/server-everything", "2026.8.31")


class Deployment:
    def __init__(self, gateway: Gunicorn, key: str) -> None:
        self.gateway = gateway
        self.key = key
        self.ids: dict[str, str] = {}

    def rest(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.gateway.url + path, headers={"X-API-Key": self.key}, timeout=60,
                                **kwargs)

    def url(self, endpoint: str) -> str:
        return f"{self.gateway.url}/metamcp/{endpoint}/mcp"

    def attach(self, namespace: str, server: str, status: str = "active") -> requests.Response:
        return self.rest("PUT", f"/api/v1/namespaces/{self.ids[namespace]}/servers/{self.ids[server]}",
                         json={"status": status})

    def namespace(self, name: str, servers: list[str], naming: str = "prefixed") -> None:
        reply = self.rest("POST", "/api/v1/namespaces", json={"name": name, "naming": naming})
        assert reply.status_code == 201, reply.text
        self.ids[name] = reply.json()["id"]
        for server in servers:
            assert self.attach(name, server).status_code == 200
        reply = self.rest("POST", "/api/v1/endpoints",
                          json={"name": name, "namespace_id": self.ids[name], "auth": {"api_key": False}})
        assert reply.status_code == 201, reply.text

    def conflicts(self, namespace: str) -> list[dict[str, Any]]:
        reply = self.rest("GET", f"/api/v1/namespaces/{self.ids[namespace]}")
        assert reply.status_code == 200, reply.text
        conflicts: list[dict[str, Any]] = reply.json()["conflicts"]
        return conflicts


def start_gateway(database_url: str, data_dir: str) -> tuple[Gunicorn, str]:
    key = fresh_keys(database_url, admin="admin")["admin"]
    # One worker: what a process logs is counted below. Lists stay cached for the whole module.
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=data_dir, METAMCP_WORKERS="1",
                    METAMCP_UPSTREAM_TIMEOUT="5", METAMCP_LIST_CACHE_TTL="600")
    return Gunicorn(env, free_port()), key


@pytest.fixture(scope="module")
def deployment(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    upstreams = [UpstreamProcess(name, extra_args=("--uri-host", "shared")) for name in ("one", "two", "three")]
    gateway, key = start_gateway(database_url, str(tmp_path_factory.mktemp("data")))
    try:
        start_all(upstreams)
        gateway.wait_ready()
        d = Deployment(gateway, key)
        for upstream in upstreams:
            reply = d.rest("POST", "/api/v1/mcp/servers",
                           json={"name": upstream.name, "transport": "streamable_http", "url": upstream.url})
            assert reply.status_code == 201, reply.text
            d.ids[upstream.name] = reply.json()["id"]
        reply = d.rest("POST", "/api/v1/mcp/servers", json={
            "name": "shouter", "transport": "stdio", "command": sys.executable, "args": [str(TOOLS_ONLY)]})
        assert reply.status_code == 201, reply.text
        d.ids["shouter"] = reply.json()["id"]
        d.namespace("triple", ["one", "two", "three"])
        d.namespace("plain", ["shouter", "one"], naming="original")
        yield d
    finally:
        gateway.stop()
        for upstream in upstreams:
            upstream.stop()


def text_of(result: Any) -> str:
    return str(result.contents[0].text)


def read(url: str, uri: str, key: str | None = None) -> str:
    async def body(client: Client) -> str:
        return text_of(await client.read_resource(uri))

    return run_client(url, key, body)


def refused(url: str, call: Any) -> str:
    """The JSON-RPC error message of a request that must fail."""

    async def body(client: Client) -> str:
        try:
            result = await call(client)
        except MCPError as e:
            return e.error.message
        raise AssertionError(f"not refused: {result}")

    return run_client(url, None, body)


def test_each_uri_is_listed_once_and_read_from_the_first_server(deployment: Deployment) -> None:
    url = deployment.url("triple")

    async def body(client: Client) -> tuple[list[str], list[str], str, str]:
        resources = [r.uri for r in await list_all(client, "resources")]
        templates = [t.uri_template for t in await list_all(client, "resource_templates")]
        info = text_of(await client.read_resource(INFO))
        item = text_of(await client.read_resource("test://shared/items/7"))
        return [str(r) for r in resources], templates, info, item

    resources, templates, info, item = run_client(url, None, body)
    assert resources == [INFO]  # three servers list it: once
    assert templates == ["test://shared/items/{item}"]
    assert json.loads(info)["name"] == "one" and item == "one item 7"  # the first attached answers
    conflicts = deployment.conflicts("triple")
    assert sorted(conflicts, key=lambda c: c["kind"]) == [
        {"kind": "resource", "uri": INFO, "servers": ["one", "two", "three"], "served_by": "one"},
        {"kind": "resourceTemplate", "uri": "test://shared/items/{item}", "servers": ["one", "two", "three"],
         "served_by": "one"},
    ]  # tools and prompts carry their server's name here: no clash
    # Switched off in the namespace, the first server's place goes to the next one.
    assert deployment.attach("triple", "one", "inactive").status_code == 200
    try:
        assert json.loads(read(url, INFO))["name"] == "two"
        assert [c["servers"] for c in deployment.conflicts("triple")] == [["two", "three"]] * 2
    finally:
        assert deployment.attach("triple", "one").status_code == 200
    assert json.loads(read(url, INFO))["name"] == "one"  # it kept its place
    # /mcp, not a namespace: servers in name order (one, three, two).
    assert json.loads(read(deployment.gateway.url + "/mcp", INFO, deployment.key))["name"] == "one"


def test_switching_a_namespace_to_original_names_names_the_clash(deployment: Deployment) -> None:
    reply = deployment.rest("PATCH", f"/api/v1/namespaces/{deployment.ids['triple']}", json={"naming": "original"})
    assert reply.status_code == 409 and reply.headers["Content-Type"] == "application/json"
    details = reply.json()["details"]
    assert details["kind"] == "tool" and details["servers"] == ["one", "two"]
    assert details["name"] in reply.json()["message"] and "'one'" in reply.json()["message"]
    assert deployment.rest("GET", f"/api/v1/namespaces/{deployment.ids['triple']}").json()["naming"] == "prefixed"
    reply = deployment.attach("plain", "two")
    assert reply.status_code == 409 and reply.json()["details"]["servers"] == ["one", "two"]
    servers = deployment.rest("GET", f"/api/v1/namespaces/{deployment.ids['plain']}").json()["servers"]
    assert [s["name"] for s in servers] == ["shouter", "one"]


def test_original_names_are_published_and_routed_unchanged(deployment: Deployment) -> None:
    async def body(client: Client) -> tuple[set[str], set[str], str, str, str]:
        tools = {t.name for t in await list_all(client, "tools")}
        prompts = {p.name for p in await list_all(client, "prompts")}
        echo = (await client.call_tool("echo", {"message": "hi"})).content[0].text
        shout = (await client.call_tool("shout", {"text": "hi"})).content[0].text
        greeting = (await client.get_prompt("greet", {"name": "Ada"})).messages[0].content.text
        return tools, prompts, echo, shout, greeting

    tools, prompts, echo, shout, greeting = run_client(deployment.url("plain"), None, body)
    assert {"echo", "add", "shout"} <= tools and not any("__" in name for name in tools - {"notify_changed"})
    assert prompts == {"greet"}
    assert echo == "one: hi" and shout == "HI" and "greet Ada" in greeting
    assert "Unknown tool" in refused(deployment.url("plain"), lambda c: c.call_tool("one__echo", {"message": "x"}))


def test_a_prompt_renamed_and_switched_off_in_a_namespace(deployment: Deployment) -> None:
    ns = deployment.ids["plain"]
    reply = deployment.rest("GET", f"/api/v1/namespaces/{ns}/prompts")
    assert reply.status_code == 200, reply.text
    greet = next(p for p in reply.json()["prompts"] if p["original_name"] == "greet")
    assert greet["name"] == "greet" and greet["server_name"] == "one"
    url = f"/api/v1/namespaces/{ns}/prompts/{greet['id']}"
    reply = deployment.rest("PATCH", url, json={"name": "hello", "title": "Hello", "description": "Say hello"})
    assert reply.status_code == 200 and reply.json()["name"] == "hello", reply.text
    endpoint = deployment.url("plain")
    try:
        async def body(client: Client) -> tuple[dict[str, Any], str]:
            prompts = {p.name: p for p in await list_all(client, "prompts")}
            text = (await client.get_prompt("hello", {"name": "Alan"})).messages[0].content.text
            return prompts, text

        prompts, text = run_client(endpoint, None, body)
        assert set(prompts) == {"hello"} and prompts["hello"].title == "Hello"
        assert prompts["hello"].description == "Say hello" and "greet Alan" in text
        assert "Unknown prompt" in refused(endpoint, lambda c: c.get_prompt("greet", {"name": "x"}))
        # Switched off: hidden, and refused by either name.
        assert deployment.rest("PATCH", url, json={"status": "inactive"}).status_code == 200

        async def names(client: Client) -> set[str]:
            return {p.name for p in await list_all(client, "prompts")}

        assert run_client(endpoint, None, names) == set()
        for name in ("hello", "greet"):
            assert "Unknown prompt" in refused(endpoint, lambda c, n=name: c.get_prompt(n, {"name": "x"}))
        # Other namespaces are untouched.
        assert run_client(deployment.url("triple"), None, names) == {"one__greet", "two__greet", "three__greet"}
    finally:
        deployment.rest("PATCH", url, json={"status": "active", "name": None, "title": None, "description": None})


def test_resources_and_templates_follow_the_server_status_in_the_namespace(deployment: Deployment) -> None:
    endpoint = deployment.url("plain")

    async def lists(client: Client) -> tuple[list[str], list[str]]:
        return ([str(r.uri) for r in await list_all(client, "resources")],
                [t.uri_template for t in await list_all(client, "resource_templates")])

    assert run_client(endpoint, None, lists) == ([INFO], ["test://shared/items/{item}"])
    assert deployment.attach("plain", "one", "inactive").status_code == 200
    try:
        assert run_client(endpoint, None, lists) == ([], [])
        for uri in (INFO, "test://shared/items/7"):
            assert "Unknown resource" in refused(endpoint, lambda c, u=uri: c.read_resource(u))
    finally:
        assert deployment.attach("plain", "one").status_code == 200
    assert json.loads(read(endpoint, INFO))["name"] == "one"


def test_a_name_an_upstream_adds_later_is_reported_not_taken_over(deployment: Deployment) -> None:
    """`one` starts listing `shout`, which the stdio server (attached first) already offers."""
    endpoint = deployment.url("plain")

    async def grow(client: Client) -> str:
        return str((await client.call_tool("grow", {"name": "shout"})).content[0].text)

    assert run_client(endpoint, None, grow) == "grown"
    expected = {"kind": "tool", "name": "shout", "servers": ["shouter", "one"], "served_by": "shouter"}
    deadline = time.monotonic() + 15
    while expected not in deployment.conflicts("plain") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert expected in deployment.conflicts("plain")

    async def body(client: Client) -> tuple[list[str], str]:
        tools = [t.name for t in await list_all(client, "tools")]
        return tools, (await client.call_tool("shout", {"text": "still me"})).content[0].text

    for _ in range(3):
        tools, text = run_client(endpoint, None, body)
        assert tools.count("shout") == 1 and text == "STILL ME"
    warnings = [line for line in deployment.gateway.output().splitlines()
                if "WARNING" in line and "tool shout" in line]
    assert len(warnings) == 1, warnings  # logged once, when it appeared
    assert "namespace plain" in warnings[0] and "shouter serves it" in warnings[0]
    # The admin sees it and resolves it: renaming the newcomer publishes both.
    tools = deployment.rest("GET", f"/api/v1/namespaces/{deployment.ids['plain']}/tools").json()["tools"]
    grown = next(t for t in tools if t["server_name"] == "one" and t["original_name"] == "shout")
    reply = deployment.rest("PATCH", f"/api/v1/namespaces/{deployment.ids['plain']}/tools/{grown['id']}",
                            json={"name": "one_shout"})
    assert reply.status_code == 200, reply.text

    async def both(client: Client) -> tuple[str, str]:
        return ((await client.call_tool("shout", {"text": "a"})).content[0].text,
                (await client.call_tool("one_shout", {})).content[0].text)

    assert run_client(endpoint, None, both) == ("A", "shout")
    assert deployment.conflicts("plain") == []


class NodeServer:
    """server-everything over Streamable HTTP on a free port (it reads PORT); stopped by PID.
    Started here, waited for by wait_listening(): several start side by side."""

    def __init__(self, home: Path, node: str, taken: Iterable[int] = ()) -> None:
        self.port = free_port()
        while self.port in taken:  # a port handed out again before the first server bound it
            self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc = subprocess.Popen([node, str(home / "dist" / "index.js"), "streamableHttp"],
                                     env={**os.environ, "PORT": str(self.port)}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server-everything did not listen within 30 s")

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def everything(deployment: Deployment) -> Iterator[dict[str, NodeServer]]:
    """Three server-everything instances, attached in order ev1, ev2, ev3 to namespace `everything`."""
    node = shutil.which("node")
    home = installed(*EVERYTHING, "npm-everything") if node else None
    if node is None or home is None:
        pytest.skip("node/npm or the server-everything package is unavailable")
    servers: dict[str, NodeServer] = {}
    try:
        for name in ("ev1", "ev2", "ev3"):
            servers[name] = NodeServer(home, node, [server.port for server in servers.values()])
        for name, server in servers.items():
            server.wait_listening()
            reply = deployment.rest("POST", "/api/v1/mcp/servers", json={
                "name": name, "transport": "streamable_http", "url": server.url})
            assert reply.status_code == 201, reply.text
            deployment.ids[name] = reply.json()["id"]
        deployment.namespace("everything", list(servers))
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_three_server_everything_list_each_uri_once_and_the_first_answers(
        deployment: Deployment, everything: dict[str, NodeServer]) -> None:
    async def lists(client: Client) -> tuple[list[str], list[str]]:
        return ([str(r.uri) for r in await list_all(client, "resources")],
                [t.uri_template for t in await list_all(client, "resource_templates")])

    uris, templates = run_client(everything["ev1"].url, None, lists)
    assert len(uris) >= 2 and templates  # what one instance lists (7 documents, 2 templates in this version)
    endpoint = deployment.url("everything")
    through, through_templates = run_client(endpoint, None, lists)
    assert sorted(through) == sorted(uris) and len(set(through)) == len(through)
    assert sorted(through_templates) == sorted(templates)
    conflicts = deployment.conflicts("everything")
    assert {c["uri"] for c in conflicts} == set(uris) | set(templates)
    assert all(c["servers"] == ["ev1", "ev2", "ev3"] and c["served_by"] == "ev1" for c in conflicts)
    assert {c["kind"] for c in conflicts} == {"resource", "resourceTemplate"}  # tools and prompts: prefixed
    document = uris[0]
    expected = run_client(everything["ev1"].url, None, lambda c: _read_text(c, document))
    assert read(endpoint, document) == expected
    # A read goes to the first server listing the URI: with it stopped, the read fails and says
    # which server it went to; switched off in the namespace, the next one answers.
    for first, rest in (("ev1", ["ev2", "ev3"]), ("ev2", ["ev3"])):
        everything[first].stop()
        message = refused(endpoint, lambda c: c.read_resource(document))
        assert f"'{first}'" in message, message
        assert deployment.attach("everything", first, "inactive").status_code == 200
        assert read(endpoint, document) == expected
        assert {tuple(c["servers"]) for c in deployment.conflicts("everything")} == (
            {tuple(rest)} if len(rest) > 1 else set())


async def _read_text(client: Client, uri: str) -> str:
    return text_of(await client.read_resource(uri))
