"""Registration under the upstream address policy: REST create/PUT/PATCH, imports, the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from metamcp.addresses import AddressPolicy, parse_allow_entry
from metamcp.app import create_app
from metamcp.config import Settings
from metamcp.db import Database

from .conftest import ROOT, child_env

SERVERS = "/api/v1/mcp/servers"
ALWAYS_REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local/cloud-metadata address"),
    ("http://[::ffff:169.254.169.254]/mcp", "::ffff:169.254.169.254 (169.254.169.254) is a link-local/cloud"),
    ("http://[::ffff:a9fe:a9fe]:80/mcp", "(169.254.169.254) is a link-local/cloud-metadata address"),
    ("https://0xa9fea9fe/mcp", "0xa9fea9fe (169.254.169.254) is a link-local/cloud-metadata address"),
    ("http://2852039166/mcp", "2852039166 (169.254.169.254) is a link-local/cloud-metadata address"),
    ("http://0251.0376.0251.0376/mcp", "(169.254.169.254) is a link-local/cloud-metadata address"),
    ("http://[64:ff9b::a9fe:a9fe]/mcp", "(169.254.169.254) is a link-local/cloud-metadata address"),
    ("http://[fe80::1%25eth0]:8080/mcp", "(fe80::1) is a link-local/cloud-metadata address"),
    ("http://[fd00:ec2::254]/latest", "fd00:ec2::254 is a link-local/cloud-metadata address"),
    ("http://100.100.100.200/latest", "100.100.100.200 is a link-local/cloud-metadata address"),
    ("http://224.0.0.1:5000/mcp", "224.0.0.1 is a multicast address"),
    ("http://[ff02::1]/mcp", "ff02::1 is a multicast address"),
    ("http://0.0.0.0:8080/mcp", "0.0.0.0 is an unspecified address"),
    ("http://0:8080/mcp", "0 (0.0.0.0) is an unspecified address"),
    ("http://[::]:8080/mcp", ":: is an unspecified address"),
]


@pytest.fixture
def client_with(settings: Settings, db: Database) -> Iterator[Callable[..., FlaskClient]]:
    """client_with(policy) -> a test client of an app serving under that address policy."""
    apps: list[Flask] = []

    def make(policy: AddressPolicy) -> FlaskClient:
        app = create_app(dataclasses.replace(settings, upstream_policy=policy), listen=False)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["metamcp"].close()


def _server(url: str, name: str = "up", transport: str = "streamable_http") -> dict[str, Any]:
    return {"name": name, "transport": transport, "url": url}


def _refusal(response: Any) -> str:
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.json
    assert body["error"] == "validation_error"
    assert len(body["details"]["url"]) == 1
    assert body["details"]["url"][0] in body["message"]
    return str(body["details"]["url"][0])


@pytest.mark.parametrize(("url", "expected"), ALWAYS_REFUSED)
def test_metadata_link_local_multicast_and_unspecified_are_refused_at_registration(
        url: str, expected: str, client: FlaskClient, api_key: str) -> None:
    headers = {"X-API-Key": api_key}
    for transport in ("streamable_http", "sse"):
        reason = _refusal(client.post(SERVERS, json=_server(url, transport=transport), headers=headers))
        assert expected in reason and reason.endswith("(always refused).")
    assert client.get(SERVERS, headers=headers).json == {"servers": []}


def test_put_and_patch_are_checked_too(client: FlaskClient, api_key: str) -> None:
    headers = {"X-API-Key": api_key}
    created = client.post(SERVERS, json=_server("http://127.0.0.1:9/mcp"), headers=headers)
    assert created.status_code == 201
    path = f"{SERVERS}/{created.json['id']}"
    reason = _refusal(client.patch(path, json={"url": "http://169.254.169.254/"}, headers=headers))
    assert "169.254.169.254 is a link-local/cloud-metadata address (always refused)" in reason
    reason = _refusal(client.put(path, json=_server("http://[fd00:ec2::254]/"), headers=headers))
    assert "fd00:ec2::254 is a link-local" in reason
    assert client.get(path, headers=headers).json["url"] == "http://127.0.0.1:9/mcp"  # unchanged
    # a PATCH of another field checks the stored URL again (still allowed)
    assert client.patch(path, json={"is_active": False}, headers=headers).status_code == 200


def test_loopback_and_private_are_allowed_by_default_and_refused_when_denied(
        client_with: Callable[..., FlaskClient], api_key: str) -> None:
    headers = {"X-API-Key": api_key}
    urls = {"loopback": ["http://127.0.0.1:9/mcp", "http://0x7f.1:9/mcp", "http://2130706433:9/mcp",
                         "http://[::1]:9/mcp", "http://localhost:9/mcp"],
            "private": ["http://10.1.2.3/mcp", "http://192.168.0.10:8080/mcp", "http://172.16.5.4/mcp",
                        "http://[fd12::1]/mcp", "http://100.64.1.1/mcp"]}
    default = client_with(AddressPolicy())
    for index, url in enumerate(urls["loopback"] + urls["private"]):
        reply = default.post(SERVERS, json=_server(url, name=f"ok{index}"), headers=headers)
        assert reply.status_code == 201, reply.json
    denied = client_with(AddressPolicy(deny=frozenset({"loopback", "private"})))
    for category, what in (("loopback", "is loopback"), ("private", "is a private address")):
        for url in urls[category]:
            reason = _refusal(denied.post(SERVERS, json=_server(url, name="no"), headers=headers))
            assert reason.endswith(f"{what} (refused by METAMCP_UPSTREAM_DENY).")
    reason = _refusal(denied.post(SERVERS, json=_server("http://localhost:9/mcp", name="no"), headers=headers))
    assert reason.startswith("localhost (127.0.0.1) is loopback")  # a name: checked by what it resolves to
    only_loopback = client_with(AddressPolicy(deny=frozenset({"loopback"})))
    assert only_loopback.post(SERVERS, json=_server("http://10.1.2.3/", name="p"), headers=headers).status_code == 201


def test_the_allow_list_narrows_registration(client_with: Callable[..., FlaskClient], api_key: str) -> None:
    headers = {"X-API-Key": api_key}
    entries = [parse_allow_entry(e) for e in ("10.0.0.0/8", "localhost")]
    narrowed = client_with(AddressPolicy(allow_networks=tuple(e for e in entries if not isinstance(e, str)),
                                         allow_hosts=tuple(e for e in entries if isinstance(e, str))))
    for index, url in enumerate(("http://10.20.30.40/mcp", "http://localhost:9/mcp")):
        assert narrowed.post(SERVERS, json=_server(url, name=f"in{index}"), headers=headers).status_code == 201
    reason = _refusal(narrowed.post(SERVERS, json=_server("http://127.0.0.1:9/mcp", name="out"), headers=headers))
    assert reason == "127.0.0.1 is not in METAMCP_UPSTREAM_ALLOW."
    reason = _refusal(narrowed.post(SERVERS, json=_server("http://192.168.1.1/", name="out"), headers=headers))
    assert reason == "192.168.1.1 is not in METAMCP_UPSTREAM_ALLOW."
    reason = _refusal(narrowed.post(SERVERS, json=_server("http://169.254.169.254/", name="out"), headers=headers))
    assert reason.endswith("(always refused).")  # the always-refused list wins


def test_an_import_with_a_refused_url_is_refused_naming_the_entry(client: FlaskClient, api_key: str) -> None:
    headers = {"X-API-Key": api_key}
    document = {"mcpServers": {
        "fine": {"url": "http://127.0.0.1:9/mcp"},
        "imds": {"type": "sse", "url": "http://[::ffff:169.254.169.254]/sse"},
    }}
    reply = client.post(f"{SERVERS}/import", json=document, headers=headers)
    assert reply.status_code == 422
    assert set(reply.json["details"]) == {"imds"}
    assert reply.json["details"]["imds"].startswith("url: ::ffff:169.254.169.254 (169.254.169.254) is a link-local")
    assert client.get(SERVERS, headers=headers).json == {"servers": []}
    partial = client.post(f"{SERVERS}/import?partial=true", json=document, headers=headers)
    assert partial.status_code == 200
    assert partial.json["created"] == ["fine"]
    assert [s["name"] for s in partial.json["skipped"]] == ["imds"]
    assert "always refused" in partial.json["skipped"][0]["reason"]


def test_the_import_script_applies_the_policy(database_url: str, tmp_path: Path, db: Database) -> None:
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": {"local": {"url": "http://127.0.0.1:9/mcp"}}}))
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path / "data"),
                    METAMCP_UPSTREAM_DENY="loopback")
    script = [sys.executable, str(ROOT / "scripts" / "servers.py"), "import", str(config)]
    refused = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "127.0.0.1 is loopback (refused by METAMCP_UPSTREAM_DENY)" in refused.stderr
    env.pop("METAMCP_UPSTREAM_DENY")
    accepted = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["created"] == ["local"]
