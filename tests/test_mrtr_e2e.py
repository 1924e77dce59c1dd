"""A 2026-07-28 client asked for input by a 2025 upstream, through live gunicorn: the upstream's
elicitation comes back as `input_required`, the client's retry (to the same process or to
another one on the same database) resumes the parked call; stale, tampered and foreign states
are refused and reach no upstream."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from metamcp.mcp.jsonrpc import INVALID_PARAMS
from metamcp.mcp.protocol import (
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_VERSION,
    METHOD_HEADER,
    MODERN_VERSION,
    NAME_HEADER,
    VERSION_HEADER,
)
from metamcp.mcp.request_state import Binding, Claims, StateCodec
from metamcp.mcp.sessions import Session

from .conftest import (
    TEST_ENCRYPTION_KEY,
    TEST_JWT_SECRET,
    Gunicorn,
    child_env,
    free_port,
    fresh_keys,
)
from .upstreams import SERVER, UpstreamProcess

UPSTREAM_TIMEOUT = 4.0  # a parked call waits 90% of it for the retry
ELICITATION = {"elicitation": {}}


class Gateways:
    def __init__(self, first: Gunicorn, second: Gunicorn, keys: dict[str, str]) -> None:
        self.first, self.second, self.keys = first, second, keys


@pytest.fixture(scope="module")
def gateways(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """Two gateway processes (one worker each, one JWT secret as replicas share it) on one
    database, in front of a 2025-only upstream over Streamable HTTP and one over stdio."""
    keys = fresh_keys(database_url, mrtr="admin", other="admin")
    upstream = UpstreamProcess(name="http", extra_args=("--legacy-only",))
    env = child_env(DATABASE_URL=database_url, METAMCP_WORKERS="1", JWT_SECRET=TEST_JWT_SECRET,
                    ENCRYPTION_KEY=base64.urlsafe_b64encode(TEST_ENCRYPTION_KEY).decode(),
                    METAMCP_UPSTREAM_TIMEOUT=str(UPSTREAM_TIMEOUT), METAMCP_KEEPALIVE_SECONDS="0.5")
    started: list[Gunicorn] = []
    try:
        upstream.start()
        for _ in range(2):
            data = str(tmp_path_factory.mktemp("data"))
            started.append(Gunicorn({**env, "METAMCP_DATA_DIR": data}, free_port()))
        for gateway in started:
            gateway.wait_ready()
        for server in ({"name": "http", "transport": "streamable_http", "url": upstream.url},
                       {"name": "stdio", "transport": "stdio", "command": sys.executable,
                        "args": [str(SERVER), "--transport", "stdio", "--name", "stdio", "--legacy-only"]}):
            response = requests.post(f"{started[0].url}/api/v1/mcp/servers", json=server,
                                     headers={"X-API-Key": keys["mrtr"]}, timeout=30)
            assert response.status_code == 201, response.text
        yield Gateways(started[0], started[1], keys)
    finally:
        for gateway in started:
            gateway.stop()
        upstream.stop()


def call(gateway: Gunicorn, key: str, tool: str, arguments: dict[str, Any], *, request_id: int = 1,
         capabilities: dict[str, Any] | None = None, retry: dict[str, Any] | None = None,
         sse: bool = False) -> list[dict[str, Any]]:
    """One 2026-07-28 tools/call (`retry`: its inputResponses and requestState): its messages."""
    params: dict[str, Any] = {"name": tool, "arguments": arguments, **(retry or {}), "_meta": {
        META_VERSION: MODERN_VERSION, META_CAPABILITIES: ELICITATION if capabilities is None else capabilities,
        META_CLIENT_INFO: {"name": "raw", "version": "1"}}}
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream" if sse else "application/json",
               VERSION_HEADER: MODERN_VERSION, METHOD_HEADER: "tools/call", NAME_HEADER: tool}
    response = requests.post(f"{gateway.url}/mcp", headers=headers, timeout=(5, 20),
                             json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
    if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
        return [response.json()]
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def asked(messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any], str]:
    """The one input request of an `input_required` answer: its key, the request, the state."""
    result = messages[-1]["result"]
    assert result["resultType"] == "input_required", messages
    [(key, request)] = result["inputRequests"].items()
    return key, request, result["requestState"]


def text(messages: list[dict[str, Any]]) -> str:
    final = messages[-1]
    assert "result" in final and final["result"]["resultType"] == "complete", final
    return str(final["result"]["content"][0]["text"])


def accept(key: str, state: str, name: str) -> dict[str, Any]:
    return {"inputResponses": {key: {"action": "accept", "content": {"name": name}}}, "requestState": state}


@pytest.mark.parametrize("server", ["http", "stdio"])
def test_an_upstream_elicitation_becomes_input_required_and_the_retry_completes_the_call(
        gateways: Gateways, server: str) -> None:
    key = gateways.keys["mrtr"]
    tool = f"{server}__ask_user"
    first = call(gateways.first, key, tool, {"question": "Who are you?"})
    input_key, request, state = asked(first)
    assert first[-1]["id"] == 1 and request["method"] == "elicitation/create"
    assert request["params"]["message"] == "Who are you?" and state.startswith("mm1.")
    final = call(gateways.first, key, tool, {"question": "Who are you?"}, request_id=2,
                 retry=accept(input_key, state, "Ada"), sse=True)
    assert final[-1]["id"] == 2 and text(final) == "accept: Ada"


def test_a_retry_reaching_another_process_is_handed_to_the_one_holding_the_call(gateways: Gateways) -> None:
    key = gateways.keys["mrtr"]
    input_key, _, state = asked(call(gateways.first, key, "http__ask_user", {"question": "Name?"}, sse=True))
    final = call(gateways.second, key, "http__ask_user", {"question": "Name?"}, request_id=2,
                 retry=accept(input_key, state, "Grace"))
    assert final[-1]["id"] == 2 and text(final) == "accept: Grace"
    # The state was spent: presenting it again finds no parked call.
    again = call(gateways.second, key, "http__ask_user", {"question": "Name?"}, request_id=3,
                 retry=accept(input_key, state, "Grace"))
    assert again[-1]["error"]["code"] == INVALID_PARAMS and "used already" in again[-1]["error"]["message"]


def test_tampered_and_foreign_states_are_refused_and_reach_no_upstream(gateways: Gateways) -> None:
    key, other = gateways.keys["mrtr"], gateways.keys["other"]
    input_key, _, state = asked(call(gateways.first, key, "http__ask_user", {"question": "Name?"}))
    prefix, body, mac = state.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["p"] = "key:999"
    tampered = ".".join((prefix, base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("="), mac))
    for presenter, arguments, presented, why in (
            (key, {"question": "Name?"}, tampered, "not one this gateway issued"),
            (other, {"question": "Name?"}, state, "another request"),
            (key, {"question": "Other?"}, state, "another request")):
        refused = call(gateways.first, presenter, "http__ask_user", arguments, request_id=2,
                       retry=accept(input_key, presented, "Eve"))
        assert refused[-1]["error"]["code"] == INVALID_PARAMS and why in refused[-1]["error"]["message"]
    # The upstream heard none of it: the call still waits for its own client's answer.
    final = call(gateways.first, key, "http__ask_user", {"question": "Name?"}, request_id=3,
                 retry=accept(input_key, state, "Ada"))
    assert text(final) == "accept: Ada"


def test_a_retry_after_the_deadline_is_refused(gateways: Gateways) -> None:
    key = gateways.keys["mrtr"]
    input_key, _, state = asked(call(gateways.first, key, "http__ask_user", {"question": "Name?"}))
    time.sleep(UPSTREAM_TIMEOUT * 0.9 + 0.3)
    for gateway in (gateways.first, gateways.second):
        late = call(gateway, key, "http__ask_user", {"question": "Name?"}, request_id=2,
                    retry=accept(input_key, state, "Ada"))
        assert late[-1]["error"]["code"] == INVALID_PARAMS and "expired" in late[-1]["error"]["message"]


def test_a_client_without_the_capability_is_not_asked(gateways: Gateways) -> None:
    """The upstream hears the refusal at once and ends the call with it."""
    started = time.monotonic()
    final = call(gateways.first, gateways.keys["mrtr"], "http__ask_user", {"question": "Name?"}, capabilities={})
    assert "did not declare the elicitation capability" in json.dumps(final[-1])
    assert time.monotonic() - started < UPSTREAM_TIMEOUT


def test_an_upstream_ping_is_answered_by_the_gateway(gateways: Gateways) -> None:
    messages = call(gateways.first, gateways.keys["mrtr"], "http__ask_ping", {}, sse=True)
    assert all("method" not in message for message in messages)
    assert text(messages) == "pong"


def test_a_state_naming_a_process_that_has_ended_is_refused_at_once(gateways: Gateways) -> None:
    """Sealed with the replicas' shared secret, so only its origin is wrong: no process hears
    the hand-over, and the retry is told so instead of waiting for the deadline."""
    arguments = {"question": "Name?"}
    client = Session("2026.t", 1, MODERN_VERSION)  # the first key made by fresh_keys
    state = StateCodec(TEST_JWT_SECRET).seal(Binding.of(client, "tools/call", "http__ask_user", arguments),
                                             time.time() + 60, Claims("http", origin="gone.1", parked="1.x"))
    started = time.monotonic()
    refused = call(gateways.second, gateways.keys["mrtr"], "http__ask_user", arguments,
                   retry=accept("elicitation-1", state, "Ada"))
    assert refused[-1]["error"]["code"] == INVALID_PARAMS and "ended" in refused[-1]["error"]["message"]
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("tool", "capability", "method", "response", "expected"), [
    ("http__ask_model", "sampling", "sampling/createMessage",
     {"role": "assistant", "model": "m", "content": {"type": "text", "text": "HELLO"}}, "HELLO"),
    # An SDK server asks for roots on its standing stream, outside the call.
    ("http__ask_roots", "roots", "roots/list", {"roots": [{"uri": "file:///work"}]}, "file:///work"),
])
def test_sampling_and_roots_are_asked_the_same_way(gateways: Gateways, tool: str, capability: str, method: str,
                                                   response: dict[str, Any], expected: str) -> None:
    key, arguments = gateways.keys["mrtr"], ({"prompt": "hello"} if "model" in tool else {})
    first = call(gateways.first, key, tool, arguments, capabilities={capability: {}}, sse=True)
    input_key, request, state = asked(first)
    assert request["method"] == method
    retry = {"inputResponses": {input_key: response}, "requestState": state}
    final = call(gateways.second, key, tool, arguments, request_id=2, capabilities={capability: {}}, retry=retry)
    assert text(final) == expected
