"""`/api/v1/namespaces`: group servers, attach them with a status, switch and rename tools."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.auth import authenticate_request, documented
from metamcp.api.namespace_schemas import (
    AttachSchema,
    BulkToolChangeSchema,
    NamespaceInputSchema,
    NamespaceListSchema,
    NamespacePatchSchema,
    NamespaceSchema,
    NamespaceToolListSchema,
    NamespaceToolSchema,
    ToolChangeSchema,
)
from metamcp.errors import NotFound, ValidationFailed
from metamcp.namespaces import NamespaceRegistry

blp = Blueprint("namespaces", __name__, url_prefix="/api/v1/namespaces",
                description="Namespaces: servers grouped, tools switched on or off and renamed")
blp.before_request(authenticate_request)


def registry() -> NamespaceRegistry:
    return current_app.extensions["metamcp"].namespaces


ERRORS = {404: "No such namespace (or server, or tool)", 409: "Name already taken",
          422: "Invalid input"}


@blp.route("")
class Namespaces(MethodView):
    @documented(blp, ERRORS)
    @blp.response(200, NamespaceListSchema)
    def get(self) -> dict[str, Any]:
        """List namespaces"""
        return {"namespaces": registry().list_all()}

    @documented(blp, ERRORS, 409)
    @blp.arguments(NamespaceInputSchema, example={"name": "research", "description": "Search and files"})
    @blp.response(201, NamespaceSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a namespace"""
        return registry().create(body)


@blp.route("/<uuid:namespace_id>")
class NamespaceById(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.response(200, NamespaceSchema)
    def get(self, namespace_id: UUID) -> dict[str, Any]:
        """Show a namespace and its servers"""
        return registry().get(namespace_id)

    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(NamespacePatchSchema, example={"description": "Research tools"})
    @blp.response(200, NamespaceSchema)
    def patch(self, body: dict[str, Any], namespace_id: UUID) -> dict[str, Any]:
        """Rename or describe a namespace"""
        return registry().update(namespace_id, body)

    @documented(blp, ERRORS, 404, 409)
    @blp.response(204)
    def delete(self, namespace_id: UUID) -> None:
        """Delete a namespace (409 while an endpoint publishes it)"""
        registry().delete(namespace_id)


@blp.route("/<uuid:namespace_id>/servers/<uuid:server_id>")
class NamespaceServer(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.arguments(AttachSchema, example={"status": "active"})
    @blp.response(200, NamespaceSchema)
    def put(self, body: dict[str, Any], namespace_id: UUID, server_id: UUID) -> dict[str, Any]:
        """Attach a server to the namespace, or change its status there"""
        return registry().attach(namespace_id, server_id, body["status"])

    @documented(blp, ERRORS, 404)
    @blp.response(204)
    def delete(self, namespace_id: UUID, server_id: UUID) -> None:
        """Detach a server from the namespace"""
        registry().detach(namespace_id, server_id)


def _tools(namespace_id: UUID) -> list[dict[str, Any]]:
    """The namespace's tools, after asking its servers for their current lists (cached)."""
    view = registry().get(namespace_id)
    current_app.extensions["metamcp"].gateway.catalog.refresh_tools([s["name"] for s in view["servers"]])
    return registry().tools(namespace_id)


@blp.route("/<uuid:namespace_id>/tools")
class NamespaceTools(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.response(200, NamespaceToolListSchema)
    def get(self, namespace_id: UUID) -> dict[str, Any]:
        """List the tools of the namespace's servers, with status and overrides

        The gateway asks the attached (active) servers for their tools first, so the list is
        current; a server that cannot be reached shows the tools it listed last.
        """
        return {"tools": _tools(namespace_id)}

    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(BulkToolChangeSchema(many=True), example=[
        {"id": "9b2d7c1e-5a4f-4e0b-8c3d-2f1e0a9b8c7d", "status": "inactive"},
        {"id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "name": "search", "annotations": {"readOnlyHint": True}},
    ])
    @blp.response(200, NamespaceToolListSchema)
    def patch(self, body: list[dict[str, Any]], namespace_id: UUID) -> dict[str, Any]:
        """Change several tools at once (all or none)"""
        if not body:
            raise ValidationFailed("The body is an empty list; send at least one tool change.")
        return {"tools": registry().change_tools(namespace_id, body)}


@blp.route("/<uuid:namespace_id>/tools/<uuid:tool_id>")
class NamespaceTool(MethodView):
    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(ToolChangeSchema, example={"name": "search", "description": "Search the web",
                                               "annotations": {"readOnlyHint": True}})
    @blp.response(200, NamespaceToolSchema)
    def patch(self, body: dict[str, Any], namespace_id: UUID, tool_id: UUID) -> dict[str, Any]:
        """Set a tool's status and overrides in this namespace

        `name`, `title` and `description` replace the upstream's (null restores it);
        `annotations` merge into the stored overrides (a null value drops that key). A
        renamed tool is called by its new name only, and an inactive one not at all.
        """
        tools = registry().change_tools(namespace_id, [{**body, "id": tool_id}])
        for tool in tools:
            if tool["id"] == tool_id:
                return tool
        raise NotFound(f"No tool with id {tool_id} in this namespace.")
