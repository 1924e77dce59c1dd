"""The gateway's requestState: sealed for one request of one principal, refused when tampered
with, expired, or presented by another principal or on another request."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import pytest

from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.request_state import Binding, Claims, StateCodec
from metamcp.mcp.sessions import Session

SECRET = "s" * 40
ENDPOINT = UUID("00000000-0000-0000-0000-000000000001")


def session(key_id: int | None = 1) -> Session:
    return Session("2026.x", key_id, "2026-07-28")


def binding(**changes: Any) -> Binding:
    fields = {"session": session(), "method": "tools/call", "target": "srv__ask", "arguments": {"q": 1}}
    fields.update(changes)
    return Binding.of(fields["session"], fields["method"], fields["target"], fields["arguments"])


def test_a_state_opens_for_the_request_it_was_sealed_for() -> None:
    codec = StateCodec(SECRET)
    token = codec.seal(binding(), time.time() + 60, Claims("srv", upstream_state="theirs"))
    assert token.startswith("mm1.") and token.count(".") == 2
    assert codec.open(token, binding()) == Claims("srv", upstream_state="theirs")
    parked = codec.seal(binding(), time.time() + 60, Claims("srv", origin="o.1", parked="7.x"))
    assert codec.open(parked, binding()) == Claims("srv", origin="o.1", parked="7.x")


def _refused(token: Any, bound: Binding, codec: StateCodec | None = None, now: float | None = None) -> str:
    with pytest.raises(RpcError) as caught:
        (codec or StateCodec(SECRET)).open(token, bound, now)
    assert caught.value.code == INVALID_PARAMS
    assert caught.value.message.startswith("Invalid params: requestState ")
    return caught.value.message


def test_a_tampered_or_foreign_state_is_refused() -> None:
    token = StateCodec(SECRET).seal(binding(), time.time() + 60, Claims("srv"))
    prefix, body, mac = token.split(".")
    other_body = StateCodec(SECRET).seal(binding(target="srv__other"), time.time() + 60, Claims("srv")).split(".")[1]
    for forged in (f"{prefix}.{other_body}.{mac}", f"{prefix}.{body}.{mac[:-2]}AA", f"mm2.{body}.{mac}",
                   f"{body}.{mac}", "", None, 42, token + "."):
        assert "not one this gateway issued" in _refused(forged, binding())
    assert "not one this gateway issued" in _refused(token, binding(), StateCodec("t" * 40))


def test_an_expired_state_is_refused() -> None:
    token = StateCodec(SECRET).seal(binding(), 1000.0, Claims("srv"))
    assert "expired" in _refused(token, binding(), now=1000.5)
    assert StateCodec(SECRET).open(token, binding(), now=999.0).server == "srv"


@pytest.mark.parametrize("other", [
    {"session": session(key_id=2)},  # another key
    {"session": Session("p", None, "2026-07-28", endpoint_id=ENDPOINT)},  # a public endpoint
    {"method": "prompts/get"},
    {"target": "srv__other"},
    {"arguments": {"q": 2}},
])
def test_a_state_for_another_principal_or_request_is_refused(other: dict[str, Any]) -> None:
    token = StateCodec(SECRET).seal(binding(), time.time() + 60, Claims("srv"))
    assert "another request" in _refused(token, binding(**other))


def test_the_principal_is_the_key_or_else_the_public_endpoint() -> None:
    assert binding().principal == "key:1"
    public = Binding.of(Session("p", None, "2026-07-28", endpoint_id=ENDPOINT), "tools/call", "t", {})
    assert public.principal == f"endpoint:{ENDPOINT}" and public.endpoint == str(ENDPOINT)
    assert binding(arguments={"a": 1, "b": 2}).digest == binding(arguments={"b": 2, "a": 1}).digest
