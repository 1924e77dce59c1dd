"""The one mapping of project errors to REST and JSON-RPC answers (metamcp.errors, pure logic)."""

from __future__ import annotations

import pytest

from metamcp.errors import (
    BadRequest,
    DatabaseUnavailable,
    Forbidden,
    McpHttpError,
    MetaMCPError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
    rest_error,
)
from metamcp.limits import LimitExceeded
from metamcp.mcp.capacity import Saturated
from metamcp.mcp.jsonrpc import INVALID_REQUEST, METHOD_NOT_FOUND
from metamcp.mcp.protocol import SERVER_BUSY, TOO_MANY_REQUESTS

AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="metamcp"'}


def test_rest_answer_is_the_error_body_with_its_headers() -> None:
    assert ValidationFailed("bad name", {"name": ["too long"]}).to_rest() == (
        422, {"error": "validation_error", "message": "bad name", "details": {"name": ["too long"]}}, {})
    assert MetaMCPError("boom").to_rest() == (
        500, {"error": "internal_error", "message": "boom", "details": None}, {})


def test_rest_401_names_the_scheme_and_a_limit_says_when_to_retry() -> None:
    assert Unauthorized("Unknown or inactive API key.").to_rest() == (
        401, {"error": "unauthorized", "message": "Unknown or inactive API key.", "details": None}, AUTHENTICATE)
    status, body, headers = LimitExceeded("Too many requests: this key may make 5 requests a minute", 0.2).to_rest()
    assert (status, body["error"], headers) == (429, "too_many_requests", {"Retry-After": "1"})
    assert body["message"] == "Too many requests: this key may make 5 requests a minute"
    assert DatabaseUnavailable().to_rest()[2] == {"Retry-After": "2"}
    assert rest_error(401, "unauthorized", "x")[2] == AUTHENTICATE
    assert rest_error(403, "forbidden", "x") == (403, {"error": "forbidden", "message": "x", "details": None}, {})


@pytest.mark.parametrize(("error", "status", "code", "message"), [
    (Unauthorized("send X-API-Key"), 401, INVALID_REQUEST, "Unauthorized: send X-API-Key"),
    (Forbidden("Origin not allowed"), 403, INVALID_REQUEST, "Forbidden: Origin not allowed"),
    (NotFound("no endpoint named 'x'"), 404, INVALID_REQUEST, "Not Found: no endpoint named 'x'"),
    (BadRequest("The request body ended before its announced end."), 400, INVALID_REQUEST,
     "The request body ended before its announced end."),
    (PayloadTooLarge("The request body is too large (limit 10 bytes)."), 413, INVALID_REQUEST,
     "The request body is too large (limit 10 bytes)."),
    (LimitExceeded("Too many failed authentication attempts from this address", 3), 429,
     TOO_MANY_REQUESTS, "Too many failed authentication attempts from this address"),
    (Saturated("Service Unavailable: busy"), 503, SERVER_BUSY, "Service Unavailable: busy"),
    (DatabaseUnavailable(), 503, SERVER_BUSY,
     "Service Unavailable: The database is unavailable; retry shortly."),
])
def test_jsonrpc_answer_of_each_refusal(error: MetaMCPError, status: int, code: int, message: str) -> None:
    answer_status, body, headers = error.to_jsonrpc(7)
    assert answer_status == status
    assert body == {"jsonrpc": "2.0", "id": 7, "error": {"code": code, "message": message}}
    # Only Retry-After: MCP answers carry no WWW-Authenticate.
    assert headers == ({} if error.retry_after is None else {"Retry-After": str(error.retry_after)})


def test_jsonrpc_answer_without_a_request_id() -> None:
    assert Forbidden("Origin not allowed").to_jsonrpc()[1]["id"] is None


def test_mcp_http_error_keeps_its_code_id_and_retry_after() -> None:
    error = McpHttpError(400, METHOD_NOT_FOUND, "Method not found: server/discover", "a")
    assert error.to_jsonrpc() == (400, {"jsonrpc": "2.0", "id": "a", "error": {
        "code": METHOD_NOT_FOUND, "message": "Method not found: server/discover"}}, {})
    assert error.to_jsonrpc(5)[1]["id"] == 5  # an id given at rendering wins
    assert error.to_rest() == (400, {"error": "bad_request", "message": "Method not found: server/discover",
                                     "details": None}, {})
    assert McpHttpError(405, INVALID_REQUEST, "Method Not Allowed").code == "method_not_allowed"


def test_mcp_http_error_answering_a_call_maps_the_limit_once() -> None:
    limit = LimitExceeded("Too many requests: this key may have 2 tool calls in flight", 1)
    refused = McpHttpError.answering(3, limit)
    assert refused.to_jsonrpc() == limit.to_jsonrpc(3) == (429, {"jsonrpc": "2.0", "id": 3, "error": {
        "code": TOO_MANY_REQUESTS, "message": "Too many requests: this key may have 2 tool calls in flight"}},
        {"Retry-After": "1"})
    busy = Saturated("Service Unavailable: busy")
    assert McpHttpError.answering(None, busy).to_jsonrpc() == busy.to_jsonrpc()
