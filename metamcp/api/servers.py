"""`/api/v1/mcp/servers`: register, inspect, change and remove upstream MCP servers."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp import client_config
from metamcp.api.auth import authenticate_request, documented
from metamcp.api.schemas import (
    ClientConfigSchema,
    ErrorSchema,
    ExecuteSchema,
    ExportQuerySchema,
    ImportQuerySchema,
    ImportReportSchema,
    LogsSchema,
    ServerInputSchema,
    ServerListSchema,
    ServerPatchSchema,
    ServerSchema,
    ToolListSchema,
    ToolResultSchema,
)
from metamcp.errors import ValidationFailed
from metamcp.mcp.jsonrpc import RpcError
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


#: Security, 401 and 403 in the OpenAPI of every view here.
_document_errors = documented(blp, {})


@blp.route("")
class Servers(MethodView):
    @_document_errors
    @blp.response(200, ServerListSchema)
    def get(self) -> dict[str, Any]:
        """List registered servers"""
        return {"servers": [_with_process(s) for s in registry().list_all()]}

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
        return _with_process(registry().get(server_id))

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


def _live(server_id: UUID, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ask a server's upstream directly (active or not), turning failures into REST errors."""
    services = current_app.extensions["metamcp"]
    config = registry().config(server_id)
    upstream = services.gateway.pool.open(config)
    try:
        if method == "tools/list":
            return {"tools": upstream.list_all("tools/list", "tools")}
        return upstream.request(method, params)
    except RpcError as e:
        raise ValidationFailed(f"The upstream refused the call: {e.message}", {"code": e.code}) from None
    finally:
        upstream.close()


@blp.route("/<uuid:server_id>/tools")
class ServerTools(MethodView):
    @_document_errors
    @blp.response(200, ToolListSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    @blp.alt_response(502, schema=ErrorSchema, description="The upstream could not be reached")
    def get(self, server_id: UUID) -> dict[str, Any]:
        """List a server's tools, live from the upstream"""
        return _live(server_id, "tools/list", {})


@blp.route("/<uuid:server_id>/tools/<string:tool>/execute")
class ExecuteTool(MethodView):
    @_document_errors
    @blp.arguments(ExecuteSchema, example={"arguments": {"message": "hello"}})
    @blp.response(200, ToolResultSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    @blp.alt_response(422, schema=ErrorSchema, description="The upstream refused the call")
    @blp.alt_response(502, schema=ErrorSchema, description="The upstream could not be reached")
    @blp.alt_response(504, schema=ErrorSchema, description="The upstream did not answer in time")
    def post(self, body: dict[str, Any], server_id: UUID, tool: str) -> dict[str, Any]:
        """Call one of a server's tools with arguments

        Returns the tool's result as MCP defines it; a tool that ran and failed has `isError`.
        """
        return _live(server_id, "tools/call", {"name": tool, "arguments": body["arguments"]})


@blp.route("/<uuid:server_id>/logs")
class ServerLogs(MethodView):
    @_document_errors
    @blp.response(200, LogsSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    def get(self, server_id: UUID) -> dict[str, Any]:
        """Recent stderr lines of a stdio server's child

        Each gateway worker runs its own child; this shows the one of the worker that answers.
        """
        name = registry().get(server_id)["name"]
        upstream = current_app.extensions["metamcp"].gateway.pool.kept(name)
        lines = upstream.stderr_lines() if upstream is not None else []
        return {"server": name, "process": _process(name), "lines": lines}


def _with_process(server: dict[str, Any]) -> dict[str, Any]:
    if server["transport"] == "stdio":
        server["process"] = _process(server["name"])
    return server


def _process(name: str) -> dict[str, Any] | None:
    client = current_app.extensions["metamcp"].gateway.pool.kept(name)
    return client.state() if client is not None else None


@blp.route("/import")
class ImportServers(MethodView):
    @_document_errors
    @blp.arguments(ImportQuerySchema, location="query")
    @blp.arguments(ClientConfigSchema, example={"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"]},
        "remote": {"type": "http", "url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer secret"}}}})
    @blp.response(200, ImportReportSchema)
    @blp.alt_response(422, schema=ErrorSchema, description="Invalid entries (nothing imported)")
    def post(self, query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """Create or update servers from an MCP client config (`mcpServers`)

        Existing names are updated, new ones created. With `partial=true` the valid entries
        are imported and the invalid ones reported as skipped; otherwise one invalid entry
        rejects the whole document.
        """
        return client_config.import_servers(registry(), body, partial=query["partial_import"])


@blp.route("/export")
class ExportServers(MethodView):
    @_document_errors
    @blp.arguments(ExportQuerySchema, location="query")
    @blp.response(200, ClientConfigSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Every server as an MCP client config (`mcpServers`); secrets masked unless asked"""
        return client_config.export_servers(registry(), include_secrets=query["include_secrets"])
