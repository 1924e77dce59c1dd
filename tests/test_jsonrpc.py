"""JSON-RPC envelope parsing and validation (pure logic)."""

from __future__ import annotations

import pytest

from metamcp.mcp import jsonrpc
from metamcp.mcp.jsonrpc import INVALID_REQUEST, PARSE_ERROR, RpcError


def test_parse_error() -> None:
    with pytest.raises(RpcError) as caught:
        jsonrpc.parse_body(b"{not json")
    assert caught.value.code == PARSE_ERROR
    assert jsonrpc.parse_body(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    "obj",
    [
        [],
        "text",
        {"id": 1, "method": "ping"},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1.5, "method": "ping"},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": ""},
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}},
    ],
)
def test_invalid_envelopes(obj: object) -> None:
    with pytest.raises(RpcError) as caught:
        jsonrpc.validate(obj)
    assert caught.value.code == INVALID_REQUEST


def test_message_kinds() -> None:
    request = jsonrpc.validate({"jsonrpc": "2.0", "id": "a", "method": "tools/list"})
    assert request.is_request and request.params == {} and request.id == "a"
    note = jsonrpc.validate({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.is_notification and note.id is None
    response = jsonrpc.validate({"jsonrpc": "2.0", "id": 3, "result": {}})
    assert response.is_response


def test_builders() -> None:
    assert jsonrpc.error(1, -32601, "nope") == {
        "jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "nope"}}
    assert jsonrpc.error(None, -32602, "bad", {"x": 1})["error"]["data"] == {"x": 1}
    assert jsonrpc.result(2, {"a": 1}) == {"jsonrpc": "2.0", "id": 2, "result": {"a": 1}}
    assert jsonrpc.notification("n") == {"jsonrpc": "2.0", "method": "n"}
