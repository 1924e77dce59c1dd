"""The project's exception tree and the one place that turns errors into JSON bodies."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

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

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        """Response headers this error adds (Retry-After)."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class BadRequest(MetaMCPError):
    status, code = 400, "bad_request"


class Unauthorized(MetaMCPError):
    status, code = 401, "unauthorized"


class Forbidden(MetaMCPError):
    status, code = 403, "forbidden"


class NotFound(MetaMCPError):
    status, code = 404, "not_found"


class Conflict(MetaMCPError):
    status, code = 409, "conflict"


class PayloadTooLarge(MetaMCPError):
    status, code = 413, "payload_too_large"


class ValidationFailed(MetaMCPError):
    status, code = 422, "validation_error"


class DatabaseUnavailable(MetaMCPError):
    """PostgreSQL cannot be reached (or has no free connection): retry shortly."""

    status, code = 503, "unavailable"
    #: Seconds clients are told to wait (the embedded server restarts within a few).
    retry_after = 2

    def __init__(self, message: str = "The database is unavailable; retry shortly.", details: Any = None) -> None:
        super().__init__(message, details)


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    response = jsonify({"error": code, "message": message, "details": details})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="metamcp"'
    return response


def http_exception_response(error: HTTPException) -> Response:
    """Werkzeug and webargs/flask-smorest aborts, in the project's error format."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    details = data.get("messages") or data.get("errors")
    message = data.get("message") or error.description or "request failed"
    if status == 422:
        message = "The request did not pass validation; see details for each field."
        # webargs nests messages under the location ("json", "query"); one location is noise.
        if isinstance(details, dict) and len(details) == 1:
            details = next(iter(details.values()))
        whole = details.get("_schema") if isinstance(details, dict) and len(details) == 1 else None
        if isinstance(whole, list) and whole and isinstance(whole[0], str):
            message = " ".join(whole)  # about the body as a whole: that is the message
    elif status == 400 and details == {"json": ["Invalid JSON body."]}:
        message, details = "The request body is not valid JSON.", None
    elif status == 413:
        message = "The request body is too large."
    response = error_response(status, STATUS_CODES.get(status, "error"), message, details)
    # The exception's own headers (Allow on a 405, Retry-After...), then those of an abort().
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    for name, value in (data.get("headers") or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(MetaMCPError)
    def _project_error(error: MetaMCPError) -> Response:
        response = error_response(error.status, error.code, error.message, error.details)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        return http_exception_response(error)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Boundary: anything unforeseen becomes an opaque 500; the traceback goes to the log only.
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "Internal error; it has been logged.")
