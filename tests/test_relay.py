"""The relay's own rules, without a network: who may be asked what, and the upstream's answer."""

from __future__ import annotations

from metamcp.mcp import jsonrpc
from metamcp.mcp.relay import _refusal, _reply
from metamcp.mcp.sessions import Session, client_capabilities


def session(capabilities: dict[str, object]) -> Session:
    return Session("s", 1, "2025-11-25", capabilities=client_capabilities(capabilities))


def test_each_request_needs_its_capability() -> None:
    bare = session({})
    assert _refusal(bare, "ping", None) is None
    for method, capability in (("sampling/createMessage", "sampling"), ("elicitation/create", "elicitation"),
                               ("roots/list", "roots")):
        assert capability in (_refusal(bare, method, {}) or "")
        assert _refusal(session({capability: {}}), method, {}) is None


def test_url_elicitation_needs_the_url_mode() -> None:
    url = {"mode": "url", "url": "https://example.test", "elicitationId": "1", "message": "m"}
    assert "URL mode" in (_refusal(session({"elicitation": {}}), "elicitation/create", url) or "")
    assert _refusal(session({"elicitation": {"url": {}}}), "elicitation/create", url) is None


def test_the_upstream_gets_the_answer_under_its_own_id() -> None:
    answer = {"jsonrpc": "2.0", "id": "mm.x.1", "result": {"action": "decline"}}
    assert _reply(41, answer) == {"jsonrpc": "2.0", "id": 41, "result": {"action": "decline"}}
    refused = _reply(41, {"jsonrpc": "2.0", "id": "mm.x.1", "error": {"code": -1, "message": "no"}})
    assert refused["id"] == 41 and refused["error"]["code"] == -1
    garbled = _reply(41, {"jsonrpc": "2.0", "id": "mm.x.1", "error": "nope"})
    assert garbled["error"]["code"] == jsonrpc.INTERNAL_ERROR
