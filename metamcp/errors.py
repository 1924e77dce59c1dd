"""The project's exception tree, and the one mapping of an error to a REST or JSON-RPC answer.

No web framework here: the app renders what to_rest() and to_jsonrpc() return (metamcp.api.errors
for REST, metamcp.mcp.transport for MCP routes).
"""

from __future__ import annotations

import logging
from typing import Any

from metamcp.mcp import jsonrpc
from metamcp.mcp.jsonrpc import INVALID_REQUEST
from metamcp.mcp.protocol import SERVER_BUSY, TOO_MANY_REQUESTS

logger = logging.getLogger(__name__)

#: An answer as the app sends it: HTTP status, JSON body, extra headers.
Answer = tuple[int, dict[str, Any], dict[str, str]]

#: error code of each HTTP status the REST API answers with.
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class MetaMCPError(Exception):
    """Root of the project's errors; carries what the client is told."""

    status = 500
    code = "internal_error"
    #: Seconds the client should wait before trying again (sent as Retry-After), if any.
    retry_after: int | None = None
    #: On MCP routes, the HTTP reason phrase that starts the JSON-RPC message ("Unauthorized:
    #: ..."), for errors whose REST message is only the detail.
    rpc_prefix: str | None = None

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        """Response headers this error adds (Retry-After)."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    @property
    def rpc_code(self) -> int:
        """The JSON-RPC code of this error on MCP routes: a limit, no room (or no database), or
        a refused request."""
        if self.status == 429:
            return TOO_MANY_REQUESTS
        if self.status == 503:
            return SERVER_BUSY
        return INVALID_REQUEST

    @property
    def rpc_message(self) -> str:
        return self.message if self.rpc_prefix is None else f"{self.rpc_prefix}: {self.message}"

    def to_rest(self) -> Answer:
        """The REST answer: the project's error body, Retry-After when set."""
        status, body, headers = rest_error(self.status, self.code, self.message, self.details)
        return status, body, {**headers, **self.headers}

    def to_jsonrpc(self, request_id: jsonrpc.RequestId | None = None) -> Answer:
        """The answer of an MCP route: a JSON-RPC error with this HTTP status, Retry-After when set."""
        return self.status, jsonrpc.error(request_id, self.rpc_code, self.rpc_message), self.headers


def rest_error(status: int, code: str, message: str, details: Any = None) -> Answer:
    """The REST error body of every REST answer; a 401 names the scheme to authenticate with."""
    headers = {"WWW-Authenticate": 'Bearer realm="metamcp"'} if status == 401 else {}
    return status, {"error": code, "message": message, "details": details}, headers


class BadRequest(MetaMCPError):
    status, code = 400, "bad_request"


class Unauthorized(MetaMCPError):
    status, code = 401, "unauthorized"
    rpc_prefix = "Unauthorized"


class Forbidden(MetaMCPError):
    status, code = 403, "forbidden"
    rpc_prefix = "Forbidden"


class NotFound(MetaMCPError):
    status, code = 404, "not_found"
    rpc_prefix = "Not Found"


class Conflict(MetaMCPError):
    status, code = 409, "conflict"


class PayloadTooLarge(MetaMCPError):
    status, code = 413, "payload_too_large"


class ValidationFailed(MetaMCPError):
    status, code = 422, "validation_error"


class DatabaseUnavailable(MetaMCPError):
    """PostgreSQL cannot be reached (or has no free connection): retry shortly."""

    status, code = 503, "unavailable"
    rpc_prefix = "Service Unavailable"
    #: Seconds clients are told to wait (the embedded server restarts within a few).
    retry_after = 2

    def __init__(self, message: str = "The database is unavailable; retry shortly.", details: Any = None) -> None:
        super().__init__(message, details)


class McpHttpError(MetaMCPError):
    """A request refused on an MCP route before (or instead of) the dispatcher: the HTTP status,
    the JSON-RPC code and message of the answer, the request's id when known, and for 429/503
    the seconds after which to retry."""

    def __init__(self, status: int, code: int, message: str, request_id: jsonrpc.RequestId | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = STATUS_CODES.get(status, "error")
        self._rpc_code = code
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def answering(cls, request_id: jsonrpc.RequestId | None, error: MetaMCPError) -> McpHttpError:
        """`error` (a limit, no room...) as the answer to the request `request_id`."""
        return cls(error.status, error.rpc_code, error.rpc_message, request_id, error.retry_after)

    @property
    def rpc_code(self) -> int:
        return self._rpc_code

    def to_jsonrpc(self, request_id: jsonrpc.RequestId | None = None) -> Answer:
        return super().to_jsonrpc(self.request_id if request_id is None else request_id)
