"""`/api/v1/namespaces`: group servers, attach them with a status, switch and rename tools and prompts."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.auth import authenticate_request, documented
from metamcp.api.namespace_schemas import (
    AttachSchema,
    BulkPromptChangeSchema,
    BulkToolChangeSchema,
    NamespaceInputSchema,
    NamespaceListSchema,
    NamespacePatchSchema,
    NamespacePromptListSchema,
    NamespacePromptSchema,
    NamespaceSchema,
    NamespaceToolListSchema,
    NamespaceToolSchema,
    PromptChangeSchema,
    ToolChangeSchema,
)
from metamcp.errors import NotFound, ValidationFailed
from metamcp.mcp.catalog import Catalog
from metamcp.namespaces import NamespaceRegistry

blp = Blueprint("namespaces", __name__, url_prefix="/api/v1/namespaces",
                description="Namespaces: servers grouped, tools and prompts switched on or off and renamed")
blp.before_request(authenticate_request)


def registry() -> NamespaceRegistry:
    return current_app.extensions["metamcp"].namespaces


ERRORS = {404: "No such namespace (or server, tool or prompt)",
          409: "Name already taken: a namespace's, or a tool's or prompt's (details name both servers and "
               "the name)", 422: "Invalid input"}


def catalog() -> Catalog:
    return current_app.extensions["metamcp"].gateway.catalog


def _refresh(namespace_id: UUID, *server_ids: UUID) -> None:
    """Ask the namespace's servers (and these) for their tools and prompts (cached lists), so
    names are checked and shown against what the upstreams offer now."""
    names = [s["name"] for s in registry().get(namespace_id)["servers"]]
    names += [s.name for s in current_app.extensions["metamcp"].gateway.pool.servers().values()
              if s.id in server_ids]
    catalog().refresh(names)


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
        """Show a namespace, its servers and its conflicts

        `conflicts` lists the names (tools, prompts) and URIs (resources, resource templates)
        that several of its active servers list now: each is published once and served by the
        first of them in the namespace's order (the order servers were attached).
        """
        namespace = registry().get(namespace_id)
        view = registry().view(namespace_id)
        return {**namespace, "conflicts": [] if view is None else catalog().conflicts(view)}

    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(NamespacePatchSchema, example={"description": "Research tools", "naming": "original"})
    @blp.response(200, NamespaceSchema)
    def patch(self, body: dict[str, Any], namespace_id: UUID) -> dict[str, Any]:
        """Rename, describe or switch the naming of a namespace

        With `naming: original` tools and prompts keep their upstream names; a switch that
        would give two of them one name is refused (409, naming both servers and the name).
        """
        if "naming" in body:
            _refresh(namespace_id)
        return registry().update(namespace_id, body)

    @documented(blp, ERRORS, 404, 409)
    @blp.response(204)
    def delete(self, namespace_id: UUID) -> None:
        """Delete a namespace (409 while an endpoint publishes it)"""
        registry().delete(namespace_id)


@blp.route("/<uuid:namespace_id>/servers/<uuid:server_id>")
class NamespaceServer(MethodView):
    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(AttachSchema, example={"status": "active"})
    @blp.response(200, NamespaceSchema)
    def put(self, body: dict[str, Any], namespace_id: UUID, server_id: UUID) -> dict[str, Any]:
        """Attach a server to the namespace, or change its status there

        A server attached comes after those attached before it. Activating it is refused (409)
        when one of its tools or prompts would take a name another already has.
        """
        if body["status"] == "active":
            _refresh(namespace_id, server_id)
        return registry().attach(namespace_id, server_id, body["status"])

    @documented(blp, ERRORS, 404)
    @blp.response(204)
    def delete(self, namespace_id: UUID, server_id: UUID) -> None:
        """Detach a server from the namespace"""
        registry().detach(namespace_id, server_id)


def _items(kind: str, namespace_id: UUID) -> list[dict[str, Any]]:
    """The namespace's tools or prompts, after asking its servers for their current lists (cached)."""
    _refresh(namespace_id)
    return registry().items(kind, namespace_id)


@blp.route("/<uuid:namespace_id>/tools")
class NamespaceTools(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.response(200, NamespaceToolListSchema)
    def get(self, namespace_id: UUID) -> dict[str, Any]:
        """List the tools of the namespace's servers, with status and overrides

        The gateway asks the attached (active) servers for their tools first, so the list is
        current; a server that cannot be reached shows the tools it listed last.
        """
        return {"tools": _items("tools", namespace_id)}

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
        return {"tools": registry().change("tools", namespace_id, body)}


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
        return _changed("tools", namespace_id, tool_id, body)


def _changed(kind: str, namespace_id: UUID, item_id: UUID, body: dict[str, Any]) -> dict[str, Any]:
    for item in registry().change(kind, namespace_id, [{**body, "id": item_id}]):
        if item["id"] == item_id:
            return item
    raise NotFound(f"No {kind[:-1]} with id {item_id} in this namespace.")


@blp.route("/<uuid:namespace_id>/prompts")
class NamespacePrompts(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.response(200, NamespacePromptListSchema)
    def get(self, namespace_id: UUID) -> dict[str, Any]:
        """List the prompts of the namespace's servers, with status and overrides

        The gateway asks the attached (active) servers for their prompts first, so the list is
        current; a server that cannot be reached shows the prompts it listed last.
        """
        return {"prompts": _items("prompts", namespace_id)}

    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(BulkPromptChangeSchema(many=True), example=[
        {"id": "9b2d7c1e-5a4f-4e0b-8c3d-2f1e0a9b8c7d", "status": "inactive"},
        {"id": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "name": "summarize"},
    ])
    @blp.response(200, NamespacePromptListSchema)
    def patch(self, body: list[dict[str, Any]], namespace_id: UUID) -> dict[str, Any]:
        """Change several prompts at once (all or none)"""
        if not body:
            raise ValidationFailed("The body is an empty list; send at least one prompt change.")
        return {"prompts": registry().change("prompts", namespace_id, body)}


@blp.route("/<uuid:namespace_id>/prompts/<uuid:prompt_id>")
class NamespacePrompt(MethodView):
    @documented(blp, ERRORS, 404, 409)
    @blp.arguments(PromptChangeSchema, example={"name": "summarize", "description": "Summarize a text"})
    @blp.response(200, NamespacePromptSchema)
    def patch(self, body: dict[str, Any], namespace_id: UUID, prompt_id: UUID) -> dict[str, Any]:
        """Set a prompt's status and overrides in this namespace

        `name`, `title` and `description` replace the upstream's (null restores it). A renamed
        prompt is got by its new name only, and an inactive one not at all.
        """
        return _changed("prompts", namespace_id, prompt_id, body)
