"""`/api/v1/endpoints`: publish a namespace as MCP, legacy SSE and OpenAPI under a name."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.auth import authenticate_request, documented
from metamcp.api.namespace_schemas import (
    EndpointInputSchema,
    EndpointListSchema,
    EndpointPatchSchema,
    EndpointSchema,
)
from metamcp.endpoints import EndpointRegistry

blp = Blueprint("endpoints", __name__, url_prefix="/api/v1/endpoints",
                description="Endpoints: a namespace served at /metamcp/{name}/...")
blp.before_request(authenticate_request)


def registry() -> EndpointRegistry:
    return current_app.extensions["metamcp"].endpoints


def _with_urls(endpoint: dict[str, Any]) -> dict[str, Any]:
    base = f"/metamcp/{endpoint['name']}"
    return {**endpoint, "urls": {"mcp": f"{base}/mcp", "sse": f"{base}/sse",
                                 "openapi": f"{base}/api/openapi.json"}}


ERRORS = {404: "No such endpoint", 409: "Name already taken",
          422: "Invalid input or unknown namespace"}


EXAMPLE = {"name": "research", "namespace_id": "0b6f2a8e-3c51-4a57-9d0e-6f7d1a2b3c4d",
           "description": "Research tools for the team", "auth": {"api_key": True, "query_param": False}}


@blp.route("")
class Endpoints(MethodView):
    @documented(blp, ERRORS)
    @blp.response(200, EndpointListSchema)
    def get(self) -> dict[str, Any]:
        """List endpoints"""
        return {"endpoints": [_with_urls(e) for e in registry().list_all()]}

    @documented(blp, ERRORS, 409, 422)
    @blp.arguments(EndpointInputSchema, example=EXAMPLE)
    @blp.response(201, EndpointSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Publish a namespace at /metamcp/{name}/mcp, /sse and /api

        `auth.api_key: false` makes the endpoint public; `auth.query_param: true` accepts
        `?api_key=` besides the headers.
        """
        return _with_urls(registry().create(body))


@blp.route("/<uuid:endpoint_id>")
class EndpointById(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.response(200, EndpointSchema)
    def get(self, endpoint_id: UUID) -> dict[str, Any]:
        """Show an endpoint"""
        return _with_urls(registry().get(endpoint_id))

    @documented(blp, ERRORS, 404, 409, 422)
    @blp.arguments(EndpointPatchSchema, example={"auth": {"api_key": False}})
    @blp.response(200, EndpointSchema)
    def patch(self, body: dict[str, Any], endpoint_id: UUID) -> dict[str, Any]:
        """Change an endpoint (name, namespace, description, auth)"""
        return _with_urls(registry().update(endpoint_id, body))

    @documented(blp, ERRORS, 404)
    @blp.response(204)
    def delete(self, endpoint_id: UUID) -> None:
        """Delete an endpoint (its sessions end)"""
        registry().delete(endpoint_id)
