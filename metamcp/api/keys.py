"""`/api/v1/keys`: API keys over REST (the same operations as scripts/keys.py)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp import keys, repository
from metamcp.api.auth import authenticate_request, documented
from metamcp.api.key_schemas import (
    KeyInputSchema,
    KeyListQuerySchema,
    KeyListSchema,
    KeyPatchSchema,
    KeySchema,
    NewKeySchema,
)
from metamcp.db import Database

blp = Blueprint("keys", __name__, url_prefix="/api/v1/keys",
                description="API keys: only hashes are stored; admin keys manage, client keys use MCP "
                            "(optionally limited to namespaces)")
blp.before_request(authenticate_request)
ERRORS = {404: "No such key", 422: "Invalid input or unknown namespace"}


def _db() -> Database:
    return current_app.extensions["metamcp"].db


@blp.route("")
class Keys(MethodView):
    @documented(blp, ERRORS)
    @blp.arguments(KeyListQuerySchema, location="query")
    @blp.response(200, KeyListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List API keys"""
        with _db().transaction() as cur:
            return {"keys": repository.list_keys(cur, include_inactive=query["include_inactive"])}

    @documented(blp, ERRORS, 422)
    @blp.arguments(KeyInputSchema, example={"name": "research-bot", "role": "client", "namespaces": ["research"]})
    @blp.response(201, NewKeySchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an API key; the key is in this answer only"""
        with _db().transaction() as cur:
            row, plain = keys.create(cur, body["name"], body["role"], body["namespaces"], body["rate_limit"])
        return {**row, "key": plain}


@blp.route("/<int:key_id>")
class KeyById(MethodView):
    @documented(blp, ERRORS, 404)
    @blp.response(200, KeySchema)
    def get(self, key_id: int) -> dict[str, Any]:
        """Show an API key"""
        with _db().transaction() as cur:
            return keys.existing(cur, key_id)

    @documented(blp, ERRORS, 404, 422)
    @blp.arguments(KeyPatchSchema, example={"is_active": False})
    @blp.response(200, KeySchema)
    def patch(self, body: dict[str, Any], key_id: int) -> dict[str, Any]:
        """Rename, switch on or off, change the role, namespaces (`null`: no limit) or rate limit of an API key

        Limiting a key to namespaces without naming a role makes it a client key; making a key
        admin without naming namespaces lifts its limit (admin keys reach everything).
        """
        with _db().transaction() as cur:
            return keys.change(cur, key_id, body)

    @documented(blp, ERRORS, 404)
    @blp.response(204)
    def delete(self, key_id: int) -> None:
        """Delete an API key (its JWTs stop working)"""
        with _db().transaction() as cur:
            keys.delete(cur, key_id)
