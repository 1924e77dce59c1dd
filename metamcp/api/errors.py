"""REST error rendering: the project's errors and werkzeug's aborts as the JSON error body."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from metamcp.errors import STATUS_CODES, Answer, MetaMCPError, rest_error

logger = logging.getLogger(__name__)


def render(answer: Answer) -> Response:
    """A REST answer (from MetaMCPError.to_rest or rest_error) as a response."""
    status, body, headers = answer
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def error_response(status: int, code: str, message: str, details: Any = None) -> Response:
    return render(rest_error(status, code, message, details))


#: Stand-ins for a path segment when checking whether it was meant as an id, and what ids are.
_SOME_IDS = (("00000000-0000-0000-0000-000000000000", "UUIDs"), ("1", "integers"))


def not_found_message() -> str:
    """What an unmatched path means: werkzeug's default text ("...check your spelling") says
    nothing about /api/v1/mcp/servers/not-a-uuid, where an id was expected and was not one."""
    path = request.path
    segments = path.split("/")
    adapter = current_app.url_map.bind("localhost")
    for index, segment in enumerate(segments):
        for some_id, kind in _SOME_IDS:
            if not segment or segment == some_id:
                continue
            candidate = "/".join([*segments[:index], some_id, *segments[index + 1:]])
            try:
                adapter.match(candidate, method=request.method)
            except MethodNotAllowed:
                pass  # the route exists (the method is another matter): the segment is wrong
            except HTTPException:
                continue  # NotFound, or a redirect: not an id position
            return f"{segment[:80]!r} is not a valid id here: these ids are {kind}."
    return f"No route {path[:200]}."


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
    elif status == 404 and error.description == NotFound.description and has_request_context():
        message = not_found_message()
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
        return render(error.to_rest())

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        return http_exception_response(error)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Boundary: anything unforeseen becomes an opaque 500; the traceback goes to the log only.
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "Internal error; it has been logged.")
