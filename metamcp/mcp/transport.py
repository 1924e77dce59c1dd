"""`/mcp`: the Streamable HTTP transport (MCP 2025-03-26, 2025-06-18, 2025-11-25).

Checks run in a fixed order: Origin, credential, Accept, Content-Type, size, JSON, envelope,
session, protocol version. Requests go to metamcp.mcp.methods; a tools/call is streamed back as
SSE (upstream notifications first, then the result) with keep-alive comments, and a client
that goes away closes the upstream call.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from metamcp.api.auth import request_credential
from metamcp.authn import Principal
from metamcp.errors import Unauthorized
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.jsonrpc import INVALID_REQUEST, METHOD_NOT_FOUND, Message, RpcError
from metamcp.mcp.methods import Dispatcher, StreamBody, Streamed
from metamcp.mcp.sessions import Session

logger = logging.getLogger(__name__)

bp = Blueprint("mcp", __name__)

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
#: Revisions served, newest first; the only one that allows JSON-RPC batches comes last.
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
BATCH_VERSION = "2025-03-26"


def _dispatcher() -> Dispatcher:
    return current_app.extensions["metamcp"].dispatcher


def rpc_response(status: int, message: dict[str, Any] | list[Any] | None,
                 headers: dict[str, str] | None = None) -> Response:
    body = "" if message is None else json.dumps(message, separators=(",", ":"))
    return Response(body, status=status, mimetype=JSON_TYPE if body else None, headers=headers)


def rpc_failure(status: int, code: int, text: str, request_id: Any = None) -> Response:
    return rpc_response(status, jsonrpc.error(request_id, code, text))


def _accepts(media_type: str) -> bool:
    accept = request.headers.get("Accept", "")
    return media_type in accept or "*/*" in accept


def _origin_allowed(origin: str | None) -> bool:
    if origin is None:
        return True  # not a browser: Origin is how browsers announce cross-site requests
    allowed = current_app.extensions["metamcp"].settings.allowed_origins
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).hostname in ("localhost", "127.0.0.1", "::1")


def _guard() -> tuple[Principal | None, Response | None]:
    """Origin and credential checks shared by POST, GET and DELETE."""
    if not _origin_allowed(request.headers.get("Origin")):
        return None, rpc_failure(403, INVALID_REQUEST, "Forbidden: Origin not allowed")
    credential = request_credential()
    if credential is None:
        return None, rpc_failure(401, INVALID_REQUEST,
                                 "Unauthorized: send X-API-Key or Authorization: Bearer")
    try:
        principal = current_app.extensions["metamcp"].authenticator.authenticate(credential)
    except Unauthorized as e:
        return None, rpc_failure(401, INVALID_REQUEST, f"Unauthorized: {e.message}")
    return principal, None


def _session(principal: Principal) -> tuple[Session | None, Response | None]:
    session_id = request.headers.get(SESSION_HEADER)
    if not session_id:
        return None, rpc_failure(400, INVALID_REQUEST, f"Bad Request: {SESSION_HEADER} header required")
    session = current_app.extensions["metamcp"].sessions.get(session_id)
    # A session of another key is answered exactly like an unknown one.
    if session is None or session.key_id != principal.key_id:
        return None, rpc_failure(404, INVALID_REQUEST, "Session not found")
    version = request.headers.get(VERSION_HEADER)
    if version is not None and version not in SUPPORTED_VERSIONS:
        return None, rpc_failure(
            400, INVALID_REQUEST,
            f"Bad Request: unsupported {VERSION_HEADER} {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return session, None


@bp.post("/mcp")
def post() -> Response:
    principal, failure = _guard()
    if failure is not None or principal is None:
        return failure  # type: ignore[return-value]
    if not (_accepts(JSON_TYPE) and _accepts(SSE_TYPE)):
        return rpc_failure(406, INVALID_REQUEST,
                           "Not Acceptable: Accept must include application/json and text/event-stream")
    if request.mimetype != JSON_TYPE:
        return rpc_failure(415, INVALID_REQUEST, "Unsupported Media Type: send application/json")
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return rpc_failure(413, INVALID_REQUEST, "Payload Too Large")
    try:
        parsed = jsonrpc.parse_body(body)
        if isinstance(parsed, list):
            return _batch(principal, parsed)
        message = jsonrpc.validate(parsed)
    except RpcError as e:
        return rpc_failure(400, e.code, e.message)

    if message.method == "initialize":
        if not message.is_request:
            return rpc_failure(400, INVALID_REQUEST, "Invalid Request: initialize needs an id")
        return _initialize(principal, message)
    if message.method == "server/discover":
        # Revision 2026-07-28 probe: a plain error makes clients fall back to initialize.
        return rpc_failure(400, METHOD_NOT_FOUND,
                           "Method not found: server/discover; this server speaks 2025-11-25 and older "
                           "revisions, start with initialize", message.id)
    session, failure = _session(principal)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    if not message.is_request:
        _dispatcher().receive(session, message)
        return rpc_response(202, None)
    outcome = _dispatcher().handle(session, message)
    if isinstance(outcome, Streamed):
        if SSE_TYPE in request.headers.get("Accept", ""):
            keepalive = current_app.extensions["metamcp"].settings.keepalive_seconds
            return Response(StreamBody(_stream(outcome, keepalive), outcome.close), mimetype=SSE_TYPE,
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return rpc_response(200, outcome.drain())
    return rpc_response(200, outcome)


def _initialize(principal: Principal, message: Message) -> Response:
    params = message.params
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        return rpc_failure(400, jsonrpc.INVALID_PARAMS, "Invalid params: protocolVersion required",
                           message.id)
    version = requested if requested in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
    client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {}
    session = current_app.extensions["metamcp"].sessions.create(principal.key_id, version, client_info)
    result = _dispatcher().initialize_result(version)
    return rpc_response(200, jsonrpc.result(message.id, result), {SESSION_HEADER: session.id})


def _batch(principal: Principal, items: list[Any]) -> Response:
    if not items:
        return rpc_failure(400, INVALID_REQUEST, "Invalid Request: empty batch")
    session, failure = _session(principal)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    if session.protocol_version != BATCH_VERSION:
        return rpc_failure(400, INVALID_REQUEST,
                           f"Invalid Request: batches are not allowed in {session.protocol_version}")
    responses: list[dict[str, Any]] = []
    for item in items:
        try:
            message = jsonrpc.validate(item)
            if message.method in ("initialize", "server/discover"):
                raise RpcError(INVALID_REQUEST, f"Invalid Request: {message.method} cannot be batched")
        except RpcError as e:
            responses.append(jsonrpc.error(item.get("id") if isinstance(item, dict) else None,
                                           e.code, e.message))
            continue
        if not message.is_request:
            _dispatcher().receive(session, message)
            continue
        outcome = _dispatcher().handle(session, message)
        responses.append(outcome.drain() if isinstance(outcome, Streamed) else outcome)
    return rpc_response(200, responses) if responses else rpc_response(202, None)


def _stream(outcome: Streamed, keepalive: float) -> Iterator[bytes]:
    """SSE body of a streamed call: its messages in order, keep-alives while it is silent.

    The body's close() (StreamBody) closes the upstream call when the client leaves early.
    """
    messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
    outcome.start_pump(messages.put)
    while True:
        try:
            message = messages.get(timeout=keepalive)
        except queue.Empty:
            yield sse.comment()
            continue
        if message is None:
            return
        yield sse.encode_event(json.dumps(message, separators=(",", ":")), event="message")


@bp.get("/mcp")
def get() -> Response:
    principal, failure = _guard()
    if failure is not None or principal is None:
        return failure  # type: ignore[return-value]
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return rpc_failure(406, INVALID_REQUEST, "Not Acceptable: Accept must include text/event-stream")
    session, failure = _session(principal)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    events = _dispatcher().open_listener(session)
    if events is None:
        # Every thread for standing streams is taken; clients treat 405 as "no stream offered".
        return Response(status=405, headers={"Allow": "POST, DELETE"})
    return Response(events, mimetype=SSE_TYPE,
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.delete("/mcp")
def delete() -> Response:
    principal, failure = _guard()
    if failure is not None or principal is None:
        return failure  # type: ignore[return-value]
    session, failure = _session(principal)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    _dispatcher().end_session(session)
    return Response(status=204)
