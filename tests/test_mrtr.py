"""Multi round-trip requests without a network: parked calls and their deadlines, a call's legs in
each era pairing, and the handlers routing retries (upstream calls are scripted PendingCalls;
the state's codec: tests/test_request_state.py)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from metamcp.mcp import jsonrpc
from metamcp.mcp.dispatcher import Dispatcher
from metamcp.mcp.jsonrpc import INVALID_PARAMS, Message, RpcError
from metamcp.mcp.modern import complete
from metamcp.mcp.mrtr import Mrtr, Parking, Rounds, input_responses
from metamcp.mcp.protocol import REQUEST_TIMEOUT, UPSTREAM_ERROR
from metamcp.mcp.relay import Relay
from metamcp.mcp.request_state import Binding, Claims
from metamcp.mcp.router import Route
from metamcp.mcp.sessions import Session, client_capabilities
from metamcp.mcp.streamed import Streamed
from metamcp.mcp.upstream.call import PendingCall

SECRET = "s" * 40


def session(capabilities: dict[str, Any], modern: bool = True, key_id: int | None = 1) -> Session:
    return Session("2026.x" if modern else "s", key_id, "2026-07-28" if modern else "2025-11-25",
                   capabilities=client_capabilities(capabilities))


def binding(**changes: Any) -> Binding:
    fields = {"session": session({}), "method": "tools/call", "target": "srv__ask", "arguments": {"q": 1}}
    fields.update(changes)
    return Binding.of(fields["session"], fields["method"], fields["target"], fields["arguments"])


# --- a retry's answers ------------------------------------------------------------------


def test_input_responses_must_be_an_object_of_results() -> None:
    assert input_responses({}) == {}
    assert input_responses({"inputResponses": {"k": {"action": "accept"}}}) == {"k": {"action": "accept"}}
    for bad in ([], "x", {"k": "accept"}):
        with pytest.raises(RpcError) as caught:
            input_responses({"inputResponses": bad})
        assert caught.value.code == INVALID_PARAMS


# --- parking ------------------------------------------------------------------------------


class Parked:
    def __init__(self) -> None:
        self.expired: list[str] = []

    def expire(self, reason: str) -> None:
        self.expired.append(reason)


def test_a_parked_call_is_taken_once_and_waits_for_its_leg_to_close() -> None:
    parking = Parking(60.0)
    parked_id, expiry = parking.reserve()
    assert expiry > time.time() + 59
    call = Parked()
    threading.Timer(0.2, parking.hold, (parked_id, call)).start()
    assert parking.take(parked_id) is call  # waited for hold()
    assert parking.take(parked_id, wait=0.1) is None
    assert parking.take("unknown", wait=0.1) is None


def test_a_parked_call_expires_at_its_deadline() -> None:
    parking = Parking(0.3)
    parked_id, _ = parking.reserve()
    call = Parked()
    assert parking.hold(parked_id, call)
    time.sleep(0.6)
    assert call.expired and "no retry within 0.3s" in call.expired[0]
    assert parking.take(parked_id, wait=0.1) is None
    assert not parking.hold(parked_id, call)


# --- a call's legs ------------------------------------------------------------------------


class Upstream:
    """A scripted upstream call: it yields what the test feeds it; our answers are kept."""

    def __init__(self, modern: bool = False) -> None:
        self.inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.answers: list[dict[str, Any]] = []
        self.cancelled: list[str | None] = []
        self.released = False
        self.call = PendingCall(1, self._messages(), interrupt=lambda: self.inbox.put(None),
                                release=self._release, send_cancelled=self.cancelled.append,
                                respond=self.answers.append)
        self.call.modern = modern

    def _messages(self) -> Any:
        while (message := self.inbox.get(timeout=10)) is not None:
            yield message

    def _release(self, _polite: bool) -> None:
        self.released = True

    def feed(self, *messages: dict[str, Any]) -> Upstream:
        for message in messages:
            self.inbox.put(message)
        return self


ELICIT = {"jsonrpc": "2.0", "id": 5, "method": "elicitation/create",
          "params": {"message": "Name?", "requestedSchema": {"type": "object"}}}
DONE = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "done"}], "isError": False}}


def mrtr(deadline: float = 60.0) -> Mrtr:
    return Mrtr(SECRET, None, "here", deadline, 30.0)  # type: ignore[arg-type]  # no hand-over here


def streamed(call: Upstream, client: Session, gateway: Mrtr, relay: Relay | None = None,
             retry: Callable[[dict[str, Any], str | None], PendingCall] | None = None) -> Streamed:
    def no_retry(_answers: dict[str, Any], _state: str | None) -> PendingCall:
        raise AssertionError("not retried")

    relay = relay or Relay(None, 60.0, "here")  # type: ignore[arg-type]  # no database needed
    subject = Streamed(1, client, lambda: None, "srv", relay, Rounds(gateway, binding(session=client), "srv",
                                                                    retry or no_retry))
    subject.attach(call.call)
    return subject


def leg(subject: Streamed, stream: bool = True) -> queue.SimpleQueue[dict[str, Any] | None]:
    out: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
    threading.Thread(target=subject.pump, args=(out.put, stream), daemon=True).start()
    return out


def until_end(out: queue.SimpleQueue[dict[str, Any] | None]) -> list[dict[str, Any]]:
    messages = []
    while (message := out.get(timeout=10)) is not None:
        messages.append(message)
    return messages


def test_a_modern_client_is_asked_by_input_required_and_its_retry_resumes_the_parked_call() -> None:
    client, gateway = session({"elicitation": {}}), mrtr()
    upstream = Upstream().feed(ELICIT)
    subject = streamed(upstream, client, gateway)
    [first] = until_end(leg(subject))
    result = first["result"]
    assert first["id"] == 1 and result["resultType"] == "input_required"
    [(key, request)] = result["inputRequests"].items()
    assert request == {"method": "elicitation/create", "params": ELICIT["params"]}
    subject.close()  # the leg's response closed: the upstream call stays open
    assert not upstream.released and not upstream.cancelled
    claims = gateway.codec.open(result["requestState"], binding(session=client))
    assert claims.origin == "here" and claims.server == "srv"
    assert gateway.parking.take(str(claims.parked)) is subject

    retry = session({"elicitation": {}})
    subject.resume(2, retry, {key: {"action": "accept", "content": {"name": "Ada"}}}, lambda: None)
    assert upstream.answers == [{"jsonrpc": "2.0", "id": 5, "result": {"action": "accept", "content": {"name": "Ada"}}}]
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 1}}
    upstream.feed(progress, DONE)
    assert until_end(leg(subject)) == [progress, {"jsonrpc": "2.0", "id": 2, "result": complete(DONE["result"])}]
    subject.close()
    assert upstream.released


def test_an_unanswered_request_is_asked_again_in_the_next_leg() -> None:
    client, gateway = session({"elicitation": {}}), mrtr()
    subject = streamed(Upstream().feed(ELICIT), client, gateway)
    [first] = until_end(leg(subject))
    subject.close()
    claims = gateway.codec.open(first["result"]["requestState"], binding(session=client))
    assert gateway.parking.take(str(claims.parked)) is subject
    subject.resume(2, client, {"unknown": {"action": "accept"}}, lambda: None)
    [again] = until_end(leg(subject))
    assert again["id"] == 2 and again["result"]["inputRequests"] == first["result"]["inputRequests"]
    assert again["result"]["requestState"] != first["result"]["requestState"]
    subject.close()


def test_ping_is_answered_by_the_gateway_and_a_missing_capability_refused_to_the_upstream() -> None:
    client = session({})  # no elicitation
    upstream = Upstream().feed({"jsonrpc": "2.0", "id": 3, "method": "ping"}, ELICIT, DONE)
    subject = streamed(upstream, client, mrtr())
    assert until_end(leg(subject)) == [{"jsonrpc": "2.0", "id": 1, "result": complete(DONE["result"])}]
    subject.close()
    assert upstream.answers[0] == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert upstream.answers[1]["id"] == 5 and "elicitation capability" in upstream.answers[1]["error"]["message"]


def test_a_request_outside_the_call_ends_the_leg_while_the_reader_waits() -> None:
    """A stdio upstream's request names no call: it reaches the newest call on that server."""
    client, gateway = session({"roots": {}}), mrtr()
    relay = Relay(None, 60.0, "here")  # type: ignore[arg-type]
    upstream = Upstream()
    subject = streamed(upstream, client, gateway, relay)
    out = leg(subject)
    time.sleep(0.1)  # the reader waits on the upstream
    answers: list[dict[str, Any]] = []
    relay.outside("srv", {"jsonrpc": "2.0", "id": 9, "method": "roots/list"}, answers.append)
    [first] = until_end(out)
    [key] = first["result"]["inputRequests"]
    subject.close()
    claims = gateway.codec.open(first["result"]["requestState"], binding(session=client))
    assert gateway.parking.take(str(claims.parked)) is subject
    subject.resume(2, client, {key: {"roots": []}}, lambda: None)
    assert answers == [{"jsonrpc": "2.0", "id": 9, "result": {"roots": []}}]
    out = leg(subject)  # served by the reader still waiting
    upstream.feed(DONE)
    assert until_end(out) == [{"jsonrpc": "2.0", "id": 2, "result": complete(DONE["result"])}]
    subject.close()


def test_a_parked_call_past_its_deadline_tells_the_upstream_and_ends() -> None:
    client, gateway = session({"elicitation": {}}), mrtr(deadline=0.3)
    upstream = Upstream().feed(ELICIT)
    subject = streamed(upstream, client, gateway)
    until_end(leg(subject))
    subject.close()
    time.sleep(0.7)
    assert upstream.answers[0]["error"]["code"] == REQUEST_TIMEOUT
    assert upstream.released and upstream.cancelled == [None]


def test_a_modern_upstreams_input_required_passes_to_a_modern_client_under_the_gateways_state() -> None:
    client, gateway = session({"elicitation": {}}), mrtr()
    asked = {"resultType": "input_required", "inputRequests": {"who": ELICIT}, "requestState": "theirs"}
    subject = streamed(Upstream(modern=True).feed({"jsonrpc": "2.0", "id": 1, "result": asked}), client, gateway)
    [final] = until_end(leg(subject))
    subject.close()
    assert final["result"]["inputRequests"] == {"who": ELICIT}
    assert final["result"]["requestState"] != "theirs"
    claims = gateway.codec.open(final["result"]["requestState"], binding(session=client))
    assert claims == Claims("srv", upstream_state="theirs")


def test_a_2025_client_is_asked_on_the_stream_and_the_upstream_retried_with_the_answers() -> None:
    client, gateway = session({"elicitation": {}}, modern=False), mrtr()
    relay = Relay(None, 60.0, "here")  # type: ignore[arg-type]
    asked = {"resultType": "input_required", "inputRequests": {"who": ELICIT}, "requestState": "theirs"}
    second = Upstream(modern=True).feed(DONE)
    retries: list[tuple[dict[str, Any], str | None]] = []

    def retry(answers: dict[str, Any], state: str | None) -> PendingCall:
        retries.append((answers, state))
        return second.call

    first = Upstream(modern=True).feed({"jsonrpc": "2.0", "id": 1, "result": asked})
    subject = streamed(first, client, gateway, relay, retry)
    out = leg(subject)
    request = out.get(timeout=10)
    assert request is not None and request["method"] == "elicitation/create" and request["id"].startswith("mm.")
    relay.answer(client, {"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept"}})
    assert until_end(out) == [{"jsonrpc": "2.0", "id": 1, "result": DONE["result"]}]
    subject.close()
    assert retries == [({"who": {"action": "accept"}}, "theirs")]
    assert first.released and second.released


def test_a_2025_client_without_a_stream_gets_an_error_naming_the_need() -> None:
    asked = {"resultType": "input_required", "inputRequests": {"who": ELICIT}}
    upstream = Upstream(modern=True).feed({"jsonrpc": "2.0", "id": 1, "result": asked})
    final = streamed(upstream, session({"elicitation": {}}, modern=False), mrtr()).drain()
    assert final["id"] == 1 and final["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert "needs input from the client" in final["error"]["message"]


def test_a_2025_client_refusing_the_input_ends_the_call_with_its_error() -> None:
    asked = {"resultType": "input_required", "inputRequests": {"who": ELICIT}}
    upstream = Upstream(modern=True).feed({"jsonrpc": "2.0", "id": 1, "result": asked})
    subject = streamed(upstream, session({}, modern=False), mrtr())  # no elicitation capability
    [final] = until_end(leg(subject))
    subject.close()
    assert final["error"]["code"] == jsonrpc.METHOD_NOT_FOUND and "elicitation" in final["error"]["message"]


def test_an_upstream_asking_without_end_is_stopped_after_ten_rounds() -> None:
    again = {"jsonrpc": "2.0", "id": 1, "result": {"resultType": "input_required", "requestState": "more"}}
    calls: list[Upstream] = []

    def retry(_answers: dict[str, Any], _state: str | None) -> PendingCall:
        calls.append(Upstream(modern=True).feed(again))
        return calls[-1].call

    subject = streamed(Upstream(modern=True).feed(again), session({}, modern=False), mrtr(), retry=retry)
    [final] = until_end(leg(subject))
    subject.close()
    assert len(calls) == 10 and final["error"]["code"] == UPSTREAM_ERROR
    assert "more than 10 times" in final["error"]["message"]


# --- the handlers: retries routed by their state --------------------------------------------


class Router:
    def route(self, _kind: str, exposed: str, _view: Any = None) -> Route:
        server, _, name = exposed.partition("__")
        return Route(server, name)

    def route_resource(self, _uri: str, _view: Any = None) -> str:
        return "srv"


class Pool:
    """What the handlers asked upstream, answered from a script."""

    def __init__(self, *answers: Any) -> None:
        self.asked: list[tuple[str, str, dict[str, Any], Any]] = []
        self._answers = list(answers)

    def call(self, server: str, method: str, params: dict[str, Any], client: Any = None) -> PendingCall:
        self.asked.append((server, method, params, client))
        upstream: Upstream = self._answers.pop(0)
        return upstream.call

    def request(self, server: str, method: str, params: dict[str, Any], client: Any = None) -> dict[str, Any]:
        self.asked.append((server, method, params, client))
        result: dict[str, Any] = self._answers.pop(0)
        return result


def dispatcher(pool: Pool, gateway: Mrtr) -> Dispatcher:
    relay = Relay(None, 60.0, "here")  # type: ignore[arg-type]
    return Dispatcher(Router(), None, pool, None, lambda *_: None, relay, None, gateway)  # type: ignore[arg-type]


def request(method: str, request_id: int = 1, **params: Any) -> Message:
    return jsonrpc.validate({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


ASKED = {"resultType": "input_required", "inputRequests": {"who": ELICIT}, "requestState": "theirs"}


def test_a_modern_retry_goes_to_the_server_that_asked_with_its_own_state() -> None:
    client, gateway = session({"elicitation": {}}), mrtr()
    pool = Pool(Upstream(modern=True).feed({"jsonrpc": "2.0", "id": 1, "result": ASKED}),
                Upstream(modern=True).feed(DONE))
    subject = dispatcher(pool, gateway)
    first = subject.handle(client, request("tools/call", name="srv__ask", arguments={"q": 1}))
    assert isinstance(first, Streamed)
    state = first.drain()["result"]["requestState"]
    answers = {"who": {"action": "accept", "content": {"name": "Ada"}}}
    retried = subject.handle(client, request("tools/call", 2, name="srv__ask", arguments={"q": 1},
                                             inputResponses=answers, requestState=state))
    assert isinstance(retried, Streamed)
    assert retried.drain() == {"jsonrpc": "2.0", "id": 2, "result": complete(DONE["result"])}
    server, method, params, meta = pool.asked[1]
    assert (server, method) == ("srv", "tools/call") and meta.modern
    assert params == {"name": "ask", "arguments": {"q": 1}, "inputResponses": answers, "requestState": "theirs"}


def test_a_retry_whose_state_fails_reaches_no_upstream() -> None:
    client, gateway = session({"elicitation": {}}), mrtr()
    pool = Pool()
    subject = dispatcher(pool, gateway)
    elsewhere = gateway.codec.seal(binding(session=client), time.time() + 60, Claims("other", upstream_state="x"))
    good = gateway.codec.seal(binding(session=client), time.time() + 60, Claims("srv", upstream_state="x"))
    for state, responses, why in ((elsewhere, {}, "another server"), ("mm1.x.y", {}, "not one"),
                                  (good, {"who": "yes"}, "inputResponses")):
        refused = subject.handle(client, request("tools/call", name="srv__ask", arguments={"q": 1},
                                                 inputResponses=responses, requestState=state))
        assert isinstance(refused, dict) and refused["error"]["code"] == INVALID_PARAMS
        assert why in refused["error"]["message"]
    assert pool.asked == []


def test_a_prompt_needing_input_passes_to_a_modern_client_and_is_refused_to_a_2025_one() -> None:
    gateway = mrtr()
    subject = dispatcher(Pool(ASKED, ASKED), gateway)
    modern = subject.handle(session({}), request("prompts/get", name="srv__greet"))
    assert isinstance(modern, dict) and modern["result"]["inputRequests"] == {"who": ELICIT}
    claims = gateway.codec.open(modern["result"]["requestState"],
                                Binding.of(session({}), "prompts/get", "srv__greet", {}))
    assert claims == Claims("srv", upstream_state="theirs")
    legacy = subject.handle(session({}, modern=False), request("prompts/get", name="srv__greet"))
    assert isinstance(legacy, dict) and legacy["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert "prompts/get" in legacy["error"]["message"]


def test_a_resource_retry_carries_the_answers_and_a_parked_state_is_no_resource_state() -> None:
    client, gateway = session({}), mrtr()
    pool = Pool({"contents": []})
    subject = dispatcher(pool, gateway)
    bound = Binding.of(client, "resources/read", "test://x", {})
    state = gateway.codec.seal(bound, time.time() + 60, Claims("srv", upstream_state="theirs"))
    read = subject.handle(client, request("resources/read", uri="test://x", inputResponses={"k": {}}, requestState=state))
    assert isinstance(read, dict) and read["result"]["contents"] == [] and read["result"]["resultType"] == "complete"
    assert pool.asked[0][2] == {"uri": "test://x", "inputResponses": {"k": {}}, "requestState": "theirs"}
    parked = gateway.codec.seal(bound, time.time() + 60, Claims("srv", origin="here", parked="1.x"))
    refused = subject.handle(client, request("resources/read", uri="test://x", requestState=parked))
    assert isinstance(refused, dict) and refused["error"]["code"] == INVALID_PARAMS
