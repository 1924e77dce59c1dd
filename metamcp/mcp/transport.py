"""`/mcp` and `/metamcp/{endpoint}/mcp`: Streamable HTTP (MCP 2025-03-26, 2025-06-18, 2025-11-25).

`/mcp` serves every active server to keys not limited to namespaces (admin or client); an
endpoint serves its namespace, with the endpoint's auth (public, API key, and optionally
`?api_key=`). Checks run in a fixed order: Origin, endpoint, the address's failed
authentications, credential, the key's rate, scope, Accept, Content-Type, size, JSON, envelope,
session, protocol version; a tools/call is then admitted (the key's in-flight cap, the worker's
thread budget) or refused with 429/503. Requests go to metamcp.mcp.methods; a tools/call is
streamed back as SSE (upstream notifications first, then the result) with keep-alive comments,
and a client that goes away closes the upstream call.
"""

from __future__ import annotations

import json
import logging
import queue
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from flask import Blueprint, Response, current_app, request

from metamcp.api.auth import limited_authentication, request_credential
from metamcp.endpoints import Endpoint
from metamcp.errors import DatabaseUnavailable, MetaMCPError, Unauthorized
from metamcp.limits import LimitExceeded
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.capacity import Saturated
from metamcp.mcp.jsonrpc import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    TOO_MANY_REQUESTS,
    Message,
    RpcError,
)
from metamcp.mcp.methods import Dispatcher, StreamBody, Streamed
from metamcp.mcp.protocol import (
    BATCH_VERSION,
    JSON_TYPE,
    SESSION_HEADER,
    SSE_HEADERS,
    SSE_TYPE,
    SUPPORTED_VERSIONS,
    VERSION_HEADER,
)
from metamcp.mcp.sessions import Session
from metamcp.namespaces import NamespaceView
from metamcp.request_body import read_body

logger = logging.getLogger(__name__)

bp = Blueprint("mcp", __name__)

#: Paths whose errors are JSON-RPC errors (the endpoint tool API answers REST errors).
MCP_PATH = re.compile(r"/mcp|/metamcp/[^/]+/(?:mcp|sse|message)")


def _dispatcher() -> Dispatcher:
    return current_app.extensions["metamcp"].dispatcher


def rpc_response(status: int, message: dict[str, Any] | list[Any] | None,
                 headers: dict[str, str] | None = None) -> Response:
    body = "" if message is None else json.dumps(message, separators=(",", ":"))
    return Response(body, status=status, mimetype=JSON_TYPE if body else None, headers=headers)


def rpc_failure(status: int, code: int, text: str, request_id: Any = None) -> Response:
    return rpc_response(status, jsonrpc.error(request_id, code, text))


def database_unavailable(error: DatabaseUnavailable) -> Response:
    """What MCP routes answer when a step needs the database and it is away: a JSON-RPC error
    with HTTP 503 and Retry-After (warm sessions, keys and tool tables do not get here)."""
    return refusal(503, f"Service Unavailable: {error.message}", error.retry_after)


bp.register_error_handler(DatabaseUnavailable, database_unavailable)


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


@dataclass(frozen=True)
class Access:
    """A caller let in: its key (None on a public endpoint), the endpoint and what it sees."""

    key_id: int | None
    endpoint: Endpoint | None  # None: /mcp
    view: NamespaceView | None  # None: every active server
    by_query: bool = False  # the key came as ?api_key=

    @property
    def endpoint_id(self) -> UUID | None:
        return None if self.endpoint is None else self.endpoint.id

    def owns(self, session: Session | None) -> bool:
        return session is not None and session.key_id == self.key_id and session.endpoint_id == self.endpoint_id


class AccessDenied(Exception):
    """A request refused before it reaches the dispatcher: the HTTP status and why (and, for
    429/503, the seconds after which to retry)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def authorize(endpoint_name: str | None = None) -> Access:
    """Origin, endpoint, credential and scope checks of every MCP and endpoint route."""
    if not _origin_allowed(request.headers.get("Origin")):
        raise AccessDenied(403, "Forbidden: Origin not allowed")
    services = current_app.extensions["metamcp"]
    endpoint = view = None
    if endpoint_name is not None:
        endpoint = services.endpoints.by_name(endpoint_name)
        view = None if endpoint is None else services.namespaces.view(endpoint.namespace_id)
        if endpoint is None or view is None:
            raise AccessDenied(404, f"Not Found: no endpoint named {endpoint_name!r}")
        if not endpoint.api_key:
            return Access(None, endpoint, view)
    credential = request_credential()
    by_query = False
    if credential is None and endpoint is not None and endpoint.query_param:
        credential, by_query = request.args.get("api_key") or None, True
    if credential is None:
        hint = " or ?api_key=" if endpoint is not None and endpoint.query_param else ""
        raise AccessDenied(401, f"Unauthorized: send X-API-Key or Authorization: Bearer{hint}")
    try:
        principal = limited_authentication(credential)
    except Unauthorized as e:
        raise AccessDenied(401, f"Unauthorized: {e.message}") from None
    except LimitExceeded as e:
        raise AccessDenied(429, e.message, e.retry_after) from None
    if endpoint is None and principal.is_scoped:
        raise AccessDenied(403, "Forbidden: this API key is limited to namespaces; use their endpoints "
                                "at /metamcp/<endpoint>/mcp")
    if endpoint is not None and not principal.may_reach(endpoint.namespace_id):
        raise AccessDenied(403, f"Forbidden: this API key may not use endpoint {endpoint.name!r}")
    return Access(principal.key_id, endpoint, view, by_query)


def guard(endpoint_name: str | None = None) -> tuple[Access | None, Response | None]:
    """authorize(), with a refusal as the JSON-RPC error answer of MCP routes."""
    try:
        return authorize(endpoint_name), None
    except AccessDenied as e:
        if e.retry_after is not None:
            return None, refusal(e.status, e.message, e.retry_after)
        return None, rpc_failure(e.status, INVALID_REQUEST, e.message)


def refusal(status: int, message: str, retry_after: int | None, request_id: Any = None) -> Response:
    """429 (a limit) or 503 (no room in this worker, or the database away) with Retry-After,
    as a JSON-RPC error."""
    code = TOO_MANY_REQUESTS if status == 429 else SERVER_BUSY
    response = rpc_failure(status, code, message, request_id)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def admit_call(access: Access, message: Message) -> tuple[Callable[[], None] | None, Response | None]:
    """Admission of a tools/call (the key's in-flight cap, then the worker's thread budget):
    the release to run when the call ends, or the 429/503 refusal."""
    try:
        return current_app.extensions["metamcp"].admission.call(access.key_id), None
    except (LimitExceeded, Saturated) as e:
        return None, refusal(e.status, e.message, e.retry_after, message.id)


def _session(access: Access) -> tuple[Session | None, Response | None]:
    session_id = request.headers.get(SESSION_HEADER)
    if not session_id:
        return None, rpc_failure(400, INVALID_REQUEST, f"Bad Request: {SESSION_HEADER} header required")
    session = current_app.extensions["metamcp"].sessions.get(session_id)
    # A session of another key or endpoint is answered exactly like an unknown one.
    if not access.owns(session):
        return None, rpc_failure(404, INVALID_REQUEST, "Session not found")
    assert session is not None
    version = request.headers.get(VERSION_HEADER)
    if version is not None and version not in SUPPORTED_VERSIONS:
        return None, rpc_failure(
            400, INVALID_REQUEST,
            f"Bad Request: unsupported {VERSION_HEADER} {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return session, None


@bp.post("/mcp")
@bp.post("/metamcp/<endpoint>/mcp")
def post(endpoint: str | None = None) -> Response:
    access, failure = guard(endpoint)
    if failure is not None or access is None:
        return failure  # type: ignore[return-value]
    if not (_accepts(JSON_TYPE) and _accepts(SSE_TYPE)):
        return rpc_failure(406, INVALID_REQUEST,
                           "Not Acceptable: Accept must include application/json and text/event-stream")
    if request.mimetype != JSON_TYPE:
        return rpc_failure(415, INVALID_REQUEST, "Unsupported Media Type: send application/json")
    try:
        body = read_body()
    except MetaMCPError as e:  # 413 past the limit, 400 for broken framing
        return rpc_failure(e.status, INVALID_REQUEST, e.message)
    try:
        parsed = jsonrpc.parse_body(body)
        if isinstance(parsed, list):
            return _batch(access, parsed)
        message = jsonrpc.validate(parsed)
    except RpcError as e:
        return rpc_failure(400, e.code, e.message)

    if message.method == "initialize":
        if not message.is_request:
            return rpc_failure(400, INVALID_REQUEST, "Invalid Request: initialize needs an id")
        return _initialize(access, message)
    if message.method == "server/discover":
        # Revision 2026-07-28 probe: a plain error makes clients fall back to initialize.
        return rpc_failure(400, METHOD_NOT_FOUND,
                           "Method not found: server/discover; this server speaks 2025-11-25 and older "
                           "revisions, start with initialize", message.id)
    session, failure = _session(access)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    if not message.is_request:
        _dispatcher().receive(session, message)
        return rpc_response(202, None)
    release: Callable[[], None] | None = None
    if message.method == "tools/call":
        release, failure = admit_call(access, message)
        if failure is not None:
            return failure
    try:
        outcome = _dispatcher().handle(session, message, access.view)
    except BaseException:
        if release is not None:
            release()
        raise
    if release is not None:
        if isinstance(outcome, Streamed):
            outcome.on_close(release)  # the call holds its place until its stream closes
        else:
            release()
    if isinstance(outcome, Streamed):
        if SSE_TYPE in request.headers.get("Accept", ""):
            keepalive = current_app.extensions["metamcp"].settings.keepalive_seconds
            return Response(StreamBody(_stream(outcome, keepalive), outcome.close), mimetype=SSE_TYPE,
                            headers=SSE_HEADERS)
        return rpc_response(200, outcome.drain())
    return rpc_response(200, outcome)


def _initialize(access: Access, message: Message) -> Response:
    params = message.params
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        return rpc_failure(400, jsonrpc.INVALID_PARAMS, "Invalid params: protocolVersion required",
                           message.id)
    version = requested if requested in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
    client_info = _client_info(params.get("clientInfo"))
    session = current_app.extensions["metamcp"].sessions.create(access.key_id, version, client_info,
                                                                access.endpoint_id)
    result = _dispatcher().initialize_result(version)
    return rpc_response(200, jsonrpc.result(message.id, result), {SESSION_HEADER: session.id})


def _client_info(value: Any) -> dict[str, str]:
    """What is kept of the client's clientInfo, for the record: short strings PostgreSQL can store."""
    if not isinstance(value, dict):
        return {}
    return {field: text[:200].replace("\0", "") for field in ("name", "title", "version")
            if isinstance(text := value.get(field), str)}


def _batch(access: Access, items: list[Any]) -> Response:
    if not items:
        return rpc_failure(400, INVALID_REQUEST, "Invalid Request: empty batch")
    session, failure = _session(access)
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
        release: Callable[[], None] | None = None
        if message.method == "tools/call":
            release, failure = admit_call(access, message)
            if failure is not None:
                responses.append(json.loads(failure.get_data()))
                continue
        try:
            outcome = _dispatcher().handle(session, message, access.view)
            responses.append(outcome.drain() if isinstance(outcome, Streamed) else outcome)
        finally:
            if release is not None:
                release()
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
@bp.get("/metamcp/<endpoint>/mcp")
def get(endpoint: str | None = None) -> Response:
    access, failure = guard(endpoint)
    if failure is not None or access is None:
        return failure  # type: ignore[return-value]
    if SSE_TYPE not in request.headers.get("Accept", ""):
        return rpc_failure(406, INVALID_REQUEST, "Not Acceptable: Accept must include text/event-stream")
    session, failure = _session(access)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    try:
        events = _dispatcher().open_listener(session, request.environ.get("gunicorn.socket"))
    except Saturated as e:
        return refusal(e.status, e.message, e.retry_after)
    return Response(events, mimetype=SSE_TYPE,
                    headers=SSE_HEADERS)


@bp.delete("/mcp")
@bp.delete("/metamcp/<endpoint>/mcp")
def delete(endpoint: str | None = None) -> Response:
    access, failure = guard(endpoint)
    if failure is not None or access is None:
        return failure  # type: ignore[return-value]
    session, failure = _session(access)
    if failure is not None or session is None:
        return failure  # type: ignore[return-value]
    _dispatcher().end_session(session)
    return Response(status=204)
