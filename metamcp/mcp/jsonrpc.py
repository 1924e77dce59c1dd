"""JSON-RPC 2.0 messages as MCP uses them: parsing, validation, error codes and builders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from metamcp import json_depth

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
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


def parse_body(body: bytes | str) -> Any:
    """Decode a message (a request body, an upstream's message); -32700 when it is not JSON
    or nests deeper than json_depth.MAX_JSON_DEPTH."""
    try:
        return json_depth.loads(body)
    except json_depth.JsonTooDeep as e:
        raise RpcError(PARSE_ERROR, f"Parse error: {e}", {"maxDepth": e.limit}) from e
    except ValueError as e:  # UnicodeDecodeError included
        raise RpcError(PARSE_ERROR, "Parse error: the body is not valid JSON") from e


#: An "id" member among the first, flat members of an object (before any nested value).
_LEADING_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")\s*[,}]')


def leading_id(body: bytes) -> RequestId | None:
    """The id of a message that cannot be parsed (too deep), when the id comes before any
    nested value, as serializers write it; None otherwise. Lets a stream shared by many calls
    fail the one call at once instead of leaving it to its timeout."""
    start = body.lstrip()[:1]
    head = body.lstrip()[1:]
    nested = min((i for i in (head.find(b"{"), head.find(b"[")) if i >= 0), default=len(head))
    match = _LEADING_ID.search(head[:nested]) if start == b"{" else None
    if match is None:
        return None
    raw = match.group(1)
    return raw[1:-1].decode("utf-8", "replace") if raw.startswith(b'"') else int(raw)


def valid_id(obj: Any) -> RequestId | None:
    """The id of an object that may not be a valid message, when the id itself is valid."""
    request_id = obj.get("id") if isinstance(obj, dict) else None
    return None if isinstance(request_id, bool) or not isinstance(request_id, str | int) else request_id


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
