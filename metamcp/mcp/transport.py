"""`/mcp` and `/metamcp/{endpoint}/mcp`: Streamable HTTP (MCP 2025-03-26, 2025-06-18, 2025-11-25
on sessions; 2026-07-28 per request, beside them on the same URLs).

`/mcp` serves every active server to keys not limited to namespaces (admin or client); an
endpoint serves its namespace, with the endpoint's auth (public, API key, and optionally
`?api_key=`). Checks run in a fixed order: Host (on a loopback listener), Origin, endpoint, the
address's failed authentications, credential, the key's rate, scope, Accept, Content-Type, size,
JSON, envelope, session, protocol version; a tools/call is then admitted (the key's in-flight cap, the worker's
thread budget) or refused with 429/503. Every refusal is raised (McpHttpError, or a project
error such as LimitExceeded) and answered by one handler as a JSON-RPC error with its HTTP
status. Requests go to metamcp.mcp.dispatcher; a tools/call is streamed back as SSE (upstream
notifications first, then the result; metamcp.mcp.streams) with keep-alive comments, and a
client that goes away closes the upstream call.

A POST without a session that says it speaks 2026-07-28 (metamcp.mcp.inbound.is_modern) takes
the same checks up to the JSON, then the revision's ladder, and is served with a Session made
for it and never stored: no session lookup, no database query once the key and lists are warm.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from flask import Blueprint, Response, current_app, request

from metamcp import observe
from metamcp.api.auth import limited_authentication, request_credential
from metamcp.endpoints import Endpoint
from metamcp.errors import Forbidden, McpHttpError, MetaMCPError, NotFound, Unauthorized
from metamcp.limits import LimitExceeded
from metamcp.mcp import inbound, jsonrpc
from metamcp.mcp.capacity import Saturated
from metamcp.mcp.dispatcher import Dispatcher
from metamcp.mcp.jsonrpc import INVALID_REQUEST, METHOD_NOT_FOUND, Message, RpcError
from metamcp.mcp.protocol import (
    BATCH_VERSION,
    JSON_TYPE,
    MODERN_VERSION,
    SESSION_HEADER,
    SSE_HEADERS,
    SSE_TYPE,
    SUPPORTED_VERSIONS,
    VERSION_HEADER,
)
from metamcp.mcp.sessions import Session, client_capabilities
from metamcp.mcp.streamed import Streamed
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


def mcp_error(error: MetaMCPError) -> Response:
    """The one answer of a refusal on MCP routes: a JSON-RPC error with the refusal's HTTP status
    (and Retry-After for 429/503). Also what a step that needs the database answers when it is
    away: 503 (warm sessions, keys and tool tables do not get here)."""
    status, body, headers = error.to_jsonrpc()
    return rpc_response(status, body, headers or None)


bp.register_error_handler(MetaMCPError, mcp_error)


def _accepts(media_type: str) -> bool:
    accept = request.headers.get("Accept", "")
    return media_type in accept or "*/*" in accept


#: Names of this machine's loopback interface, as a Host or Origin may spell them.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _host_allowed() -> bool:
    """DNS rebinding: a gateway listening on loopback answers only requests addressed to a
    loopback name (or to METAMCP_ALLOWED_HOSTS); a page whose name now resolves to 127.0.0.1
    gets nothing. A gateway listening on other addresses is reached by whatever name points at
    it: nothing is checked."""
    settings = current_app.extensions["metamcp"].settings
    if settings.host not in LOOPBACK_HOSTS and not settings.host.startswith("127."):
        return True
    hostname = urlsplit("//" + request.host).hostname if request.host else None
    allowed = settings.allowed_hosts
    return hostname is not None and (hostname in LOOPBACK_HOSTS or "*" in allowed or hostname in allowed)


def _origin_allowed(origin: str | None) -> bool:
    if origin is None:
        return True  # not a browser: Origin is how browsers announce cross-site requests
    allowed = current_app.extensions["metamcp"].settings.allowed_origins
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).hostname in LOOPBACK_HOSTS


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


def authorize(endpoint_name: str | None = None) -> Access:
    """Host, Origin, endpoint, credential and scope checks of every MCP and endpoint route;
    raises McpHttpError (421), Forbidden, NotFound, Unauthorized or LimitExceeded (rendered as
    JSON-RPC errors on MCP routes, as REST errors by the tool API)."""
    if not _host_allowed():
        raise McpHttpError(421, INVALID_REQUEST, "Misdirected Request: Host not allowed; set "
                                                 "METAMCP_ALLOWED_HOSTS to serve other names")
    if not _origin_allowed(request.headers.get("Origin")):
        raise Forbidden("Origin not allowed")
    services = current_app.extensions["metamcp"]
    endpoint = view = None
    observation = observe.current()
    if observation is not None:
        observation.endpoint = endpoint_name
    if endpoint_name is not None:
        endpoint = services.endpoints.by_name(endpoint_name)
        view = None if endpoint is None else services.namespaces.view(endpoint.namespace_id)
        if endpoint is None or view is None:
            raise NotFound(f"no endpoint named {endpoint_name!r}")
        if not endpoint.api_key:
            return Access(None, endpoint, view)
    credential = request_credential()
    by_query = False
    if credential is None and endpoint is not None and endpoint.query_param:
        credential, by_query = request.args.get("api_key") or None, True
    if credential is None:
        hint = " or ?api_key=" if endpoint is not None and endpoint.query_param else ""
        raise Unauthorized(f"send X-API-Key or Authorization: Bearer{hint}")
    principal = limited_authentication(credential)  # Unauthorized, or LimitExceeded (429)
    if endpoint is None and principal.is_scoped:
        raise Forbidden("this API key is limited to namespaces; use their endpoints at /metamcp/<endpoint>/mcp")
    if endpoint is not None and not principal.may_reach(endpoint.namespace_id):
        raise Forbidden(f"this API key may not use endpoint {endpoint.name!r}")
    return Access(principal.key_id, endpoint, view, by_query)


def admit_call(access: Access, message: Message) -> Callable[[], None]:
    """Admission of a tools/call (the key's in-flight cap, then the worker's thread budget):
    the release to run when the call ends; raises McpHttpError 429/503 answering the call."""
    try:
        release: Callable[[], None] = current_app.extensions["metamcp"].admission.call(access.key_id)
    except (LimitExceeded, Saturated) as e:
        raise McpHttpError.answering(message.id, e) from None
    return release


def owned_session(access: Access, session_id: str | None, missing: str) -> Session:
    """The caller's session `session_id`; 400 `missing` without one, 404 when unknown. A session
    of another key or endpoint is answered exactly like an unknown one."""
    if not session_id:
        raise McpHttpError(400, INVALID_REQUEST, missing)
    session = current_app.extensions["metamcp"].sessions.get(session_id)
    if session is None or not access.owns(session):
        raise McpHttpError(404, INVALID_REQUEST, "Session not found")
    _observed_session(session.id)
    return session


def _observed_session(session_id: str) -> None:
    observation = observe.current()
    if observation is not None:
        observation.session = session_id


def _session(access: Access) -> Session:
    session = owned_session(access, request.headers.get(SESSION_HEADER),
                            f"Bad Request: {SESSION_HEADER} header required")
    version = request.headers.get(VERSION_HEADER)
    if version is not None and version not in SUPPORTED_VERSIONS:
        raise McpHttpError(
            400, INVALID_REQUEST,
            f"Bad Request: unsupported {VERSION_HEADER} {version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return session


@bp.post("/mcp")
@bp.post("/metamcp/<endpoint>/mcp")
def post(endpoint: str | None = None) -> Response:
    access = authorize(endpoint)
    # Lenient: the revisions ask clients to accept both, but a client that takes only JSON gets
    # every answer as JSON (a tools/call's result once it is complete).
    if not _accepts(JSON_TYPE):
        raise McpHttpError(406, INVALID_REQUEST, f"Not Acceptable: Accept must include {JSON_TYPE}")
    if request.mimetype != JSON_TYPE:
        raise McpHttpError(415, INVALID_REQUEST, f"Unsupported Media Type: send {JSON_TYPE}")
    body = read_body()  # 413 past the limit, 400 for broken framing
    try:
        parsed = jsonrpc.parse_body(body)
    except RpcError as e:  # not JSON: no id can be trusted (JSON-RPC answers null)
        raise McpHttpError(400, e.code, e.message) from None
    modern = inbound.is_modern(request.headers, parsed)
    if isinstance(parsed, list):
        if modern:
            raise McpHttpError(400, INVALID_REQUEST, "Invalid Request: 2026-07-28 has no batches")
        return _batch(access, parsed)
    try:
        message = jsonrpc.validate(parsed)
    except RpcError as e:
        raise McpHttpError(400, e.code, e.message, jsonrpc.valid_id(parsed)) from None
    observation = observe.current()
    if observation is not None:
        observation.mcp_method = message.method
    try:
        return _modern(access, message) if modern else _answer(access, message)
    except McpHttpError as e:
        if e.request_id is None:
            e.request_id = message.id  # every refusal past parsing names the request it answers
        raise
    except MetaMCPError as e:  # the database away, a limit: the same, with the request's id
        raise McpHttpError.answering(message.id, e) from None


def _answer(access: Access, message: Message) -> Response:
    """Everything after parsing: initialize, the session, then the dispatcher."""
    if message.method == "initialize":
        if not message.is_request:
            raise McpHttpError(400, INVALID_REQUEST, "Invalid Request: initialize needs an id")
        return _initialize(access, message)
    if message.method == "server/discover":
        # Revision 2026-07-28 probe: a plain error makes clients fall back to initialize.
        raise McpHttpError(400, METHOD_NOT_FOUND,
                           "Method not found: server/discover; this server speaks 2025-11-25 and older "
                           "revisions, start with initialize", message.id)
    session = _session(access)
    if not message.is_request:
        _dispatcher().receive(session, message, access.view)
        return rpc_response(202, None)
    release = admit_call(access, message) if message.method == "tools/call" else None
    outcome = _handled(access, session, message, release)
    if isinstance(outcome, Streamed):
        if SSE_TYPE in request.headers.get("Accept", ""):
            events = current_app.extensions["metamcp"].streams.call_body(outcome)
            return Response(events, mimetype=SSE_TYPE, headers=SSE_HEADERS)
        return rpc_response(200, outcome.drain())
    return rpc_response(200, outcome)


def _modern(access: Access, message: Message) -> Response:
    """A 2026-07-28 POST: the ladder (metamcp.mcp.inbound), then the request served with a
    Session made for it and never stored (no database on its path), answered as JSON, or as SSE
    for a tools/call (closing the stream cancels the call) and subscriptions/listen."""
    if message.is_response:
        raise McpHttpError(400, INVALID_REQUEST, "Invalid Request: a 2026-07-28 client sends no responses")
    if not message.is_request:  # nothing to act on without a session (cancelling: closing a stream)
        refused = inbound.unsupported(request.headers.get(VERSION_HEADER, ""))
        return rpc_response(202, None) if refused is None else _refusal(None, refused)
    verdict = inbound.classify(message.raw, request.headers)
    if isinstance(verdict, inbound.Refusal):
        return _refusal(message.id, verdict)
    session = Session(id="2026." + secrets.token_urlsafe(12), key_id=access.key_id, protocol_version=MODERN_VERSION,
                      log_level=verdict.log_level, endpoint_id=access.endpoint_id,
                      capabilities=client_capabilities(verdict.capabilities))
    wants_sse = SSE_TYPE in request.headers.get("Accept", "")
    if message.method == inbound.LISTEN:
        if not wants_sse:
            raise McpHttpError(406, INVALID_REQUEST, f"Not Acceptable: subscriptions/listen needs {SSE_TYPE}")
        try:
            events = current_app.extensions["metamcp"].streams.open_subscription(
                message.id, message.params.get("notifications"), access.view, request.environ.get("gunicorn.socket"))
        except RpcError as e:
            return _refusal(message.id, inbound.Refusal(400, e.code, e.message))
        return Response(events, mimetype=SSE_TYPE, headers=SSE_HEADERS)
    release = None
    if message.method == "tools/call":
        arguments = message.params.get("arguments")
        schema = _dispatcher().input_schema(message.params.get("name"), access.view)
        refused = inbound.param_refusal(schema, arguments if isinstance(arguments, dict) else {}, request.headers)
        if refused is not None:
            return _refusal(message.id, refused)
        release = admit_call(access, message)
    outcome = _handled(access, session, message, release)
    streamed = None
    if isinstance(outcome, Streamed):
        streamed = outcome
        reply = current_app.extensions["metamcp"].streams.call_reply(outcome) if wants_sse else outcome.drain()
        if not isinstance(reply, dict):
            return Response(reply, mimetype=SSE_TYPE, headers=SSE_HEADERS)
        outcome = reply
    error = outcome.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    response = rpc_response(inbound.ERROR_STATUS.get(code, 200) if isinstance(code, int) else 200, outcome)
    if streamed is not None and wants_sse:
        response.call_on_close(streamed.close)  # after the answer is sent, not before
    return response


def _refusal(request_id: Any, refusal: inbound.Refusal) -> Response:
    return rpc_response(refusal.status, jsonrpc.error(request_id, refusal.code, refusal.message, refusal.data))


def _handled(access: Access, session: Session, message: Message,
             release: Callable[[], None] | None) -> dict[str, Any] | Streamed:
    """The dispatcher's answer; an admitted call (`release`) holds its place until its stream
    closes, or until now when it is answered at once."""
    try:
        outcome = _dispatcher().handle(session, message, access.view)
    except BaseException:
        if release is not None:
            release()
        raise
    if release is not None:
        if isinstance(outcome, Streamed):
            outcome.on_close(release)
        else:
            release()
    return outcome


def _initialize(access: Access, message: Message) -> Response:
    params = message.params
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise McpHttpError(400, jsonrpc.INVALID_PARAMS, "Invalid params: protocolVersion required",
                           message.id)
    version = requested if requested in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
    client_info = _client_info(params.get("clientInfo"))
    session = current_app.extensions["metamcp"].sessions.create(
        access.key_id, version, client_info, access.endpoint_id, client_capabilities(params.get("capabilities")))
    _observed_session(session.id)
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
        raise McpHttpError(400, INVALID_REQUEST, "Invalid Request: empty batch")
    session = _session(access)
    if session.protocol_version != BATCH_VERSION:
        raise McpHttpError(400, INVALID_REQUEST,
                           f"Invalid Request: batches are not allowed in {session.protocol_version}")
    responses: list[dict[str, Any]] = []
    for item in items:
        try:
            message = jsonrpc.validate(item)
            if message.method in ("initialize", "server/discover"):
                raise RpcError(INVALID_REQUEST, f"Invalid Request: {message.method} cannot be batched")
        except RpcError as e:
            responses.append(jsonrpc.error(jsonrpc.valid_id(item), e.code, e.message))
            continue
        if not message.is_request:
            _dispatcher().receive(session, message, access.view)
            continue
        try:
            release = admit_call(access, message) if message.method == "tools/call" else None
        except McpHttpError as refused:
            responses.append(refused.to_jsonrpc()[1])
            continue
        try:
            outcome = _dispatcher().handle(session, message, access.view)
            responses.append(outcome.drain() if isinstance(outcome, Streamed) else outcome)
        finally:
            if release is not None:
                release()
    return rpc_response(200, responses) if responses else rpc_response(202, None)


def _modern_stream_refused() -> Response | None:
    """2026-07-28 has no GET stream and no session to DELETE: 405 (spec: Backward Compatibility)."""
    if not inbound.is_modern(request.headers, None):
        return None
    return rpc_response(405, jsonrpc.error(None, INVALID_REQUEST, "Method Not Allowed: 2026-07-28 takes POST only"),
                        {"Allow": "POST"})


@bp.get("/mcp")
@bp.get("/metamcp/<endpoint>/mcp")
def get(endpoint: str | None = None) -> Response:
    access = authorize(endpoint)
    if (refused := _modern_stream_refused()) is not None:
        return refused
    if SSE_TYPE not in request.headers.get("Accept", ""):
        raise McpHttpError(406, INVALID_REQUEST, f"Not Acceptable: Accept must include {SSE_TYPE}")
    session = _session(access)
    # Saturated (503) when the worker has no room for another stream.
    events = current_app.extensions["metamcp"].streams.open_listener(
        session, request.environ.get("gunicorn.socket"), None if access.view is None else access.view.servers)
    return Response(events, mimetype=SSE_TYPE, headers=SSE_HEADERS)


@bp.delete("/mcp")
@bp.delete("/metamcp/<endpoint>/mcp")
def delete(endpoint: str | None = None) -> Response:
    access = authorize(endpoint)
    if (refused := _modern_stream_refused()) is not None:
        return refused
    session = _session(access)
    _dispatcher().end_session(session)
    return Response(status=204)
