"""Marshmallow schemas of the API key routes."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, fields, validate

from metamcp.api.schemas import ChangesSomething, no_newlines

#: Key names: 1-200 characters once surrounding spaces are trimmed (the CHECK uses btrim).
_KEY_NAME: list[Any] = [
    validate.Length(min=1, max=200), validate.Regexp(re.compile(r"^ *[^ ]"), error="Must not be blank."),
    no_newlines,
]


def _namespaces_field(**kwargs: Any) -> fields.List:
    return fields.List(
        fields.String(validate=validate.Length(min=1, max=64)), allow_none=True,
        metadata={"description": "client keys only. null: the key reaches every MCP route; a list of "
                                 "namespace names or ids: only their endpoints", "example": ["research"]},
        **kwargs)


def _role_field(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.OneOf(["admin", "client"]),
        metadata={"description": "admin: the admin API and every MCP route (an admin key can run "
                                 "commands on the host through stdio servers); client: MCP only",
                  "example": "client"},
        **kwargs)


def _rate_limit_field(**kwargs: Any) -> fields.Integer:
    return fields.Integer(
        allow_none=True, validate=validate.Range(min=1, max=1_000_000),
        metadata={"description": "requests per minute for this key; null: the METAMCP_RATE_LIMIT default",
                  "example": 600},
        **kwargs)


class KeyInputSchema(Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(required=True, validate=_KEY_NAME, metadata={"example": "laptop"})
    role = _role_field(required=True)
    namespaces = _namespaces_field(load_default=None)
    rate_limit = _rate_limit_field(load_default=None)


class KeyPatchSchema(ChangesSomething, Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(validate=_KEY_NAME)
    is_active = fields.Boolean()
    role = _role_field()
    namespaces = _namespaces_field()
    rate_limit = _rate_limit_field()


class KeySchema(Schema):
    id = fields.Integer(metadata={"example": 3})
    name = fields.String(metadata={"example": "laptop"})
    key_prefix = fields.String(metadata={"example": "mcp_9mQx2Lp0"})
    role = fields.String(metadata={"example": "client"})
    is_active = fields.Boolean()
    scoped = fields.Boolean(metadata={"description": "limited to `namespaces`"})
    namespaces = fields.List(fields.String(), metadata={"example": ["research"]})
    rate_limit = fields.Integer(allow_none=True, metadata={
        "description": "requests per minute; null: the METAMCP_RATE_LIMIT default", "example": None})
    created_at = fields.DateTime()
    last_used_at = fields.DateTime(allow_none=True)


class NewKeySchema(KeySchema):
    key = fields.String(metadata={"description": "the API key; shown only in this answer",
                                  "example": "mcp_9mQx2Lp0..."})


class KeyListSchema(Schema):
    keys = fields.List(fields.Nested(KeySchema))


class KeyListQuerySchema(Schema):
    include_inactive = fields.Boolean(load_default=False)
