"""JSON-RPC 2.0 messages as MCP uses them: parsing, validation, error codes and builders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Implementation-defined server errors (-32000..-32099); the timeout as the SDK uses it.
REQUEST_TIMEOUT = -32001
#: An upstream server could not be reached or answered nonsense.
UPSTREAM_ERROR = -32010
#: Over a limit (HTTP 429 with Retry-After): the key's request rate or in-flight calls, or too
#: many failed authentications from the client's address.
TOO_MANY_REQUESTS = -32029
#: The worker has no room for another long call or stream (HTTP 503 with Retry-After).
SERVER_BUSY = -32030

RequestId = str | int


class RpcError(Exception):
    """An error to answer with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


@dataclass(frozen=True)
class Message:
    """One validated message: a request (method + id), a notification (method) or a response."""

    raw: dict[str, Any]

    @property
    def id(self) -> RequestId | None:
        return self.raw.get("id")

    @property
    def method(self) -> str | None:
        return self.raw.get("method")

    @property
    def params(self) -> dict[str, Any]:
        return self.raw.get("params") or {}

    @property
    def is_request(self) -> bool:
        return "method" in self.raw and "id" in self.raw

    @property
    def is_notification(self) -> bool:
        return "method" in self.raw and "id" not in self.raw

    @property
    def is_response(self) -> bool:
        return "method" not in self.raw


def parse_body(body: bytes) -> Any:
    """Decode a request body; -32700 when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RpcError(PARSE_ERROR, "Parse error: the body is not valid JSON") from e


def validate(obj: Any) -> Message:
    """Check the JSON-RPC 2.0 envelope; -32600 when it is not a valid message."""
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object")
    if "id" in obj:
        request_id = obj["id"]
        if isinstance(request_id, bool) or not isinstance(request_id, str | int):
            raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    if "method" in obj:
        if not isinstance(obj["method"], str) or not obj["method"]:
            raise RpcError(INVALID_REQUEST, "Invalid Request: method must be a non-empty string")
        if "params" in obj and not isinstance(obj["params"], dict):
            raise RpcError(INVALID_REQUEST, "Invalid Request: params must be an object")
    elif "id" not in obj or ("result" in obj) == ("error" in obj):
        raise RpcError(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response")
    return Message(obj)


def request(request_id: RequestId, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def result(request_id: RequestId | None, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": RpcError(code, message, data).to_error()}
