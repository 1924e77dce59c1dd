"""Test-only stand-in for the transport's 2026-07-28 branch (built on another branch): a POST
that says 2026-07-28 and names no session is served with a Session made for it, as the design
contract has it. tests/test_mrtr_e2e.py runs gunicorn on `create()`; once the transport routes
these requests itself, those tests run on `metamcp.app:create_app()` and this module goes."""

from __future__ import annotations

import json
import re
import secrets

from flask import Flask, Response, current_app, request

from metamcp.app import create_app
from metamcp.errors import MetaMCPError
from metamcp.mcp import jsonrpc, transport
from metamcp.mcp.jsonrpc import RpcError
from metamcp.mcp.protocol import (
    META_CAPABILITIES,
    META_LOG_LEVEL,
    MODERN_VERSION,
    SESSION_HEADER,
    SSE_HEADERS,
    SSE_TYPE,
    VERSION_HEADER,
)
from metamcp.mcp.sessions import Session, client_capabilities
from metamcp.mcp.streams import Streamed

MCP_PATH = re.compile(r"/mcp|/metamcp/([^/]+)/mcp")


def create() -> Flask:
    app = create_app()
    app.before_request(_modern)
    return app


def _modern() -> Response | None:
    path = MCP_PATH.fullmatch(request.path)
    if (request.method != "POST" or path is None or request.headers.get(VERSION_HEADER) != MODERN_VERSION
            or request.headers.get(SESSION_HEADER)):
        return None
    services = current_app.extensions["metamcp"]
    try:
        access = transport.authorize(path.group(1))
        message = jsonrpc.validate(json.loads(request.get_data()))
        meta = message.params.get("_meta") if isinstance(message.params.get("_meta"), dict) else {}
        session = Session(id="2026." + secrets.token_urlsafe(12), key_id=access.key_id,
                          protocol_version=MODERN_VERSION, log_level=meta.get(META_LOG_LEVEL),
                          endpoint_id=access.endpoint_id, capabilities=client_capabilities(meta.get(META_CAPABILITIES)))
        outcome = services.dispatcher.handle(session, message, access.view)
    except MetaMCPError as e:
        return transport.mcp_error(e)
    except (RpcError, ValueError) as e:
        return transport.rpc_response(400, jsonrpc.error(None, jsonrpc.INVALID_REQUEST, str(e)))
    if isinstance(outcome, Streamed):
        if SSE_TYPE in request.headers.get("Accept", ""):
            return Response(services.streams.call_body(outcome), mimetype=SSE_TYPE, headers=SSE_HEADERS)
        outcome = outcome.drain()
    return transport.rpc_response(200, outcome)
