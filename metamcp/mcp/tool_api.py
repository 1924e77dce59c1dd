"""An endpoint's tools as plain REST: `GET /metamcp/{name}/api/openapi.json` describes each
active tool as `POST /metamcp/{name}/api/{tool}` with its input schema as the request body.

A call answers 200 with the tool's result. Errors use the REST error format: 400 for a body
that is not a JSON object or arguments the upstream rejects, 404 for a tool the namespace
does not offer, 422 `tool_error` (with the tool's content) for a tool that ran and failed,
502 when the upstream fails, 504 when it does not answer in time.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from metamcp import observe
from metamcp.api.errors import error_response
from metamcp.config import package_version
from metamcp.mcp.gateway import Gateway
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.protocol import JSON_TYPE, REQUEST_TIMEOUT, SERVER_BUSY, UPSTREAM_ERROR
from metamcp.mcp.transport import Access, authorize
from metamcp.request_body import read_json

bp = Blueprint("tool_api", __name__)

_ERRORS = {
    "400": "The body is not a JSON object, or the tool rejected the arguments",
    "401": "Missing or invalid credential",
    "403": "This key may not use this endpoint",
    "404": "No such tool in this endpoint's namespace",
    "422": "The tool ran and reported an error (its content is in details)",
    "429": "Over a limit: the key's request rate or in-flight calls, or failed authentications "
           "from this address (see Retry-After)",
    "502": "The upstream server failed",
    "503": "This worker is saturated with long calls, or stopping; retry (after Retry-After seconds)",
    "504": "The upstream server did not answer in time",
}
#: REST status of each JSON-RPC code the gateway answers an upstream failure with.
_STATUS = {UPSTREAM_ERROR: (502, "bad_gateway"), REQUEST_TIMEOUT: (504, "gateway_timeout"),
           SERVER_BUSY: (503, "unavailable")}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "details": {}},
}


def _security(access: Access) -> tuple[dict[str, Any], list[dict[str, list[str]]]]:
    endpoint = access.endpoint
    if endpoint is None or not endpoint.api_key:
        return {}, []
    schemes: dict[str, Any] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or mcp_ API key"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    if endpoint.query_param:
        schemes["apiKeyQuery"] = {"type": "apiKey", "in": "query", "name": "api_key"}
    return schemes, [{name: []} for name in schemes]


@bp.get("/metamcp/<endpoint>/api/openapi.json")
def openapi(endpoint: str) -> Response:
    access = authorize(endpoint)  # refusals are REST errors, rendered by the app's one handler
    tools = current_app.extensions["metamcp"].gateway.catalog.aggregate("tools", access.view)
    schemes, security = _security(access)
    paths = {}
    for tool in tools:
        responses: dict[str, Any] = {
            "200": {"description": "The tool's result (MCP CallToolResult)",
                    "content": {JSON_TYPE: {"schema": {
                        "type": "object",
                        "properties": {"content": {"type": "array", "items": {"type": "object"}},
                                       "structuredContent": tool.get("outputSchema") or {"type": "object"},
                                       "isError": {"type": "boolean"}}}}}},
        }
        for status, description in _ERRORS.items():
            responses[status] = {"description": description,
                                 "content": {JSON_TYPE: {"schema": _ERROR_SCHEMA}}}
        operation: dict[str, Any] = {
            "operationId": tool["name"],
            "summary": tool.get("title") or (tool.get("annotations") or {}).get("title") or tool["name"],
            "description": tool.get("description") or "",
            "requestBody": {"required": True, "content": {JSON_TYPE: {
                "schema": tool.get("inputSchema") or {"type": "object"}}}},
            "responses": responses,
        }
        if security:
            operation["security"] = security
        paths[f"/metamcp/{endpoint}/api/{tool['name']}"] = {"post": operation}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"MetaMCP endpoint {endpoint}", "version": package_version(),
                 "description": f"The active tools of namespace {access.view.name if access.view else ''}, "
                                "each callable with its arguments as the JSON body."},
        "servers": [{"url": request.host_url.rstrip("/")}],
        "paths": paths,
    }
    if schemes:
        document["components"] = {"securitySchemes": schemes}
    return jsonify(document)


@bp.post("/metamcp/<endpoint>/api/<tool>")
def call_tool(endpoint: str, tool: str) -> Response:
    access = authorize(endpoint)  # refusals are REST errors, rendered by the app's one handler
    if request.mimetype != JSON_TYPE:
        return error_response(415, "unsupported_media_type", "Send the arguments as a JSON object.")
    # Project errors (413, broken framing, invalid or too deep JSON, 429/503 at admission) are
    # REST errors here, rendered with their Retry-After by the app's one handler.
    arguments = read_json()
    if not isinstance(arguments, dict):
        return error_response(400, "bad_request", "The body must be a JSON object of the tool's arguments.")
    services = current_app.extensions["metamcp"]
    release = services.admission.call(access.key_id)
    try:
        return _call(services.gateway, access, tool, arguments)
    finally:
        release()


def _call(gateway: Gateway, access: Access, tool: str, arguments: dict[str, Any]) -> Response:
    """The call, recorded as a tools/call Operation of the request (metamcp.observe)."""
    op = observe.operation("tools/call", tool)
    try:
        route = gateway.router.route("tools", tool, access.view)
    except RpcError as e:  # upstream failures arrive as the gateway's client_error
        op.failed(e.code)
        if e.code == INVALID_PARAMS:
            return error_response(404, "not_found", f"No tool named {tool!r} in this endpoint.")
        status, code = _STATUS.get(e.code, (500, "internal_error"))
        return error_response(status, code, e.message)
    op.routed(route.server, route.name)
    op.upstream_started()
    try:
        result = gateway.pool.request(route.server, "tools/call", {"name": route.name, "arguments": arguments})
    except RpcError as e:
        op.failed(e.code)
        if e.code in _STATUS:  # the gateway's client_error: the upstream failed or timed out
            status, code = _STATUS[e.code]
            return error_response(status, code, e.message)
        # The upstream's own JSON-RPC error answer.
        if e.code == INVALID_PARAMS:
            return error_response(400, "bad_request", e.message, {"code": e.code})
        return error_response(502, "bad_gateway", e.message, {"code": e.code})
    finally:
        op.upstream_ended()
    op.answered({"result": result})
    if result.get("isError"):
        text = " ".join(c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict)).strip()
        return error_response(422, "tool_error", text or f"The tool {tool!r} reported an error.", result)
    return jsonify(result)
