"""The relay's own rules, without a network: who may be asked what, and the upstream's answer."""

from __future__ import annotations

import time
from typing import Any

from metamcp.mcp import jsonrpc
from metamcp.mcp.protocol import REQUEST_TIMEOUT
from metamcp.mcp.relay import Relay, _refusal, _reply
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


class Stream:
    """A channel that keeps what it is sent (pure logic: no process, no network)."""

    def __init__(self, capabilities: dict[str, object], open_: bool = True) -> None:
        self.session = session(capabilities)
        self.sent: list[dict[str, Any]] = []
        self.open = open_

    def send(self, message: dict[str, Any]) -> bool:
        if self.open:
            self.sent.append(message)
        return self.open


def relay(upstream_timeout: float = 60.0) -> Relay:
    return Relay(None, upstream_timeout, "test")  # type: ignore[arg-type]  # no database needed here


def test_outside_a_call_the_newest_call_then_the_newest_listener_is_asked() -> None:
    subject, answers = relay(), []
    call, listener, blind = Stream({}), Stream({}), Stream({})
    subject.listening(listener, frozenset({"a"}))
    subject.listening(blind, frozenset({"b"}))
    subject.outside("a", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, answers.append)
    assert len(listener.sent) == 1 and not blind.sent
    subject.opened("a", call)
    subject.outside("a", {"jsonrpc": "2.0", "id": 2, "method": "ping"}, answers.append)
    assert len(call.sent) == 1 and len(listener.sent) == 1
    subject.answer(call.session, {"jsonrpc": "2.0", "id": call.sent[0]["id"], "result": {}})
    assert answers == [{"jsonrpc": "2.0", "id": 2, "result": {}}]
    subject.outside("c", {"jsonrpc": "2.0", "id": 3, "method": "ping"}, answers.append)
    assert answers[-1] == {"jsonrpc": "2.0", "id": 3, "result": {}}  # nobody to ask: answered here


def test_a_closed_stream_or_an_ended_call_refuses_at_once() -> None:
    subject, answers = relay(), []
    subject.ask(Stream({"sampling": {}}, open_=False), {"id": 1, "method": "sampling/createMessage"},
                answers.append)
    assert answers[-1]["error"]["code"] == jsonrpc.INTERNAL_ERROR
    call = Stream({"sampling": {}})
    subject.opened("a", call)
    subject.ask(call, {"id": 2, "method": "sampling/createMessage"}, answers.append)
    subject.closed("a", call)
    assert answers[-1]["id"] == 2 and "ended" in answers[-1]["error"]["message"]


def test_a_withdrawn_request_is_renamed_and_forgotten() -> None:
    subject, answers = relay(), []
    call = Stream({"roots": {}})
    subject.ask(call, {"id": 9, "method": "roots/list"}, answers.append)
    key = call.sent[0]["id"]
    cancelled = subject.withdrawn(call, {"method": "notifications/cancelled", "params": {"requestId": 9}})
    assert cancelled["params"]["requestId"] == key
    subject.answer(call.session, {"id": key, "result": {"roots": []}})
    assert answers == []  # the upstream withdrew it: no answer goes back


def test_the_deadline_answers_the_upstream() -> None:
    subject, answers = relay(upstream_timeout=0.2), []
    subject.ask(Stream({"elicitation": {}}), {"id": 4, "method": "elicitation/create"}, answers.append)
    for _ in range(50):  # bounded: 5 s
        if answers:
            break
        time.sleep(0.1)
    assert answers and answers[0]["id"] == 4 and answers[0]["error"]["code"] == REQUEST_TIMEOUT
