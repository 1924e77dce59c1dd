"""`/api/v1/mcp/servers`: register, inspect, change and remove upstream MCP servers."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.auth import SECURITY, authenticate_request
from metamcp.api.schemas import (
    ErrorSchema,
    ServerInputSchema,
    ServerListSchema,
    ServerPatchSchema,
    ServerSchema,
)
from metamcp.servers import ServerRegistry

blp = Blueprint(
    "servers", __name__, url_prefix="/api/v1/mcp/servers", description="Upstream MCP servers"
)
blp.before_request(authenticate_request)

EXAMPLE = {
    "name": "everything",
    "description": "The MCP reference server",
    "transport": "streamable_http",
    "url": "http://127.0.0.1:3001/mcp",
    "headers": {"X-Upstream-Key": "secret"},
}


def registry() -> ServerRegistry:
    return current_app.extensions["metamcp"].servers


def _document_errors(view: Any) -> Any:
    view = blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credential")(view)
    return blp.doc(security=SECURITY)(view)


@blp.route("")
class Servers(MethodView):
    @_document_errors
    @blp.response(200, ServerListSchema)
    def get(self) -> dict[str, Any]:
        """List registered servers"""
        return {"servers": registry().list_all()}

    @_document_errors
    @blp.arguments(ServerInputSchema, example=EXAMPLE)
    @blp.response(201, ServerSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="Name already taken")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register a server

        Secrets (`bearer_token`, header and env values) are encrypted at rest and returned masked.
        """
        return registry().create(body)


@blp.route("/<uuid:server_id>")
class ServerById(MethodView):
    @_document_errors
    @blp.response(200, ServerSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    def get(self, server_id: UUID) -> dict[str, Any]:
        """Show one server"""
        return registry().get(server_id)

    @_document_errors
    @blp.arguments(ServerInputSchema, example=EXAMPLE)
    @blp.response(200, ServerSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    @blp.alt_response(409, schema=ErrorSchema, description="Name already taken")
    def put(self, body: dict[str, Any], server_id: UUID) -> dict[str, Any]:
        """Replace a server's definition

        Omitted optional fields take their defaults. A masked secret sent back unchanged keeps
        the stored secret.
        """
        return registry().replace(server_id, body)

    @_document_errors
    @blp.arguments(ServerPatchSchema, example={"is_active": False})
    @blp.response(200, ServerSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    @blp.alt_response(409, schema=ErrorSchema, description="Name already taken")
    def patch(self, body: dict[str, Any], server_id: UUID) -> dict[str, Any]:
        """Change some fields of a server"""
        return registry().update(server_id, body)

    @_document_errors
    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    def delete(self, server_id: UUID) -> None:
        """Remove a server"""
        registry().delete(server_id)
