"""Marshmallow schemas of the namespace, tool-setting and endpoint routes."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, fields, validate

from metamcp.api.schemas import URL_NAME, ChangesSomething, name_validators
from metamcp.namespaces import NAMINGS

#: A tool's exposed name when overridden in a namespace.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _status_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(["active", "inactive"]),
                         metadata={"description": "active or inactive", "example": "inactive"}, **kwargs)


def _naming_field() -> fields.String:
    return fields.String(validate=validate.OneOf(NAMINGS), metadata={
        "description": "how tools and prompts are named: prefixed (`<server>__<name>`, the default) or "
                       "original (the upstream's names; two servers may then not offer one name)",
        "example": "original"})


class NamespaceInputSchema(Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(required=True, validate=URL_NAME, metadata={"example": "research"})
    description = fields.String(validate=validate.Length(max=2000), metadata={"example": "Search and files"})
    naming = _naming_field()


class NamespacePatchSchema(ChangesSomething, NamespaceInputSchema):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=True, **kwargs)


class NamespaceServerSchema(Schema):
    id = fields.UUID()
    name = fields.String(metadata={"example": "files"})
    status = fields.String(metadata={"description": "status in this namespace", "example": "active"})
    is_active = fields.Boolean(metadata={"description": "the server's own switch"})


class ConflictSchema(Schema):
    kind = fields.String(metadata={"description": "tool, prompt, resource or resourceTemplate",
                                   "example": "resource"})
    name = fields.String(metadata={"description": "the exposed name (tools and prompts)"})
    uri = fields.String(metadata={"description": "the URI or URI template (resources)",
                                  "example": "test://static/info"})
    servers = fields.List(fields.String(), metadata={"description": "the servers listing it, in the "
                                                     "namespace's order", "example": ["files", "files2"]})
    served_by = fields.String(metadata={"description": "the server that keeps it (the first)",
                                        "example": "files"})


class NamespaceSchema(Schema):
    id = fields.UUID(metadata={"example": "0b6f2a8e-3c51-4a57-9d0e-6f7d1a2b3c4d"})
    name = fields.String(metadata={"example": "research"})
    description = fields.String()
    naming = fields.String(metadata={"description": "prefixed or original", "example": "prefixed"})
    servers = fields.List(fields.Nested(NamespaceServerSchema),
                          metadata={"description": "in the order they were attached: the first keeps a "
                                                   "name or URI several list"})
    conflicts = fields.List(fields.Nested(ConflictSchema), metadata={
        "description": "GET of one namespace only: names and URIs several of its active servers list "
                       "now; each is served by the first server only"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class NamespaceListSchema(Schema):
    namespaces = fields.List(fields.Nested(NamespaceSchema))


class AttachSchema(Schema):
    class Meta:
        unknown = "raise"

    status = _status_field(required=True)


class PromptChangeSchema(ChangesSomething, Schema):
    """Status and overrides of one prompt in a namespace (a tool's add annotations)."""

    class Meta:
        unknown = "raise"

    status = _status_field()
    name = fields.String(
        allow_none=True,
        validate=name_validators(TOOL_NAME_RE, "Use 1-64 letters, digits, '_', '.' or '-'."),
        metadata={"description": "name clients see; null restores the naming's", "example": "search"},
    )
    title = fields.String(allow_none=True, validate=validate.Length(max=200), metadata={"example": "Search"})
    description = fields.String(allow_none=True, validate=validate.Length(max=10_000))


class ToolChangeSchema(PromptChangeSchema):
    """Status and overrides of one tool in a namespace; annotations merge (null drops a key)."""

    annotations = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True,
                              metadata={"example": {"readOnlyHint": True}})


class BulkToolChangeSchema(ToolChangeSchema):
    id = fields.UUID(required=True, metadata={"description": "tool id"})


class NamespaceItemSchema(Schema):
    """What a tool and a prompt share in a namespace's listing."""

    id = fields.UUID()
    server_id = fields.UUID()
    server_name = fields.String(metadata={"example": "files"})
    server_status = fields.String(metadata={"description": "the server's status in this namespace"})
    original_name = fields.String(metadata={"example": "search_files"})
    name = fields.String(metadata={"description": "exposed name", "example": "files__search_files"})
    status = fields.String(metadata={"example": "active"})
    title = fields.String(allow_none=True)
    description = fields.String(allow_none=True)


class NamespaceToolSchema(NamespaceItemSchema):
    annotations = fields.Dict()
    input_schema = fields.Dict()
    overrides = fields.Dict(metadata={"example": {"name": None, "title": None, "description": None,
                                                  "annotations": {}}})


class NamespaceToolListSchema(Schema):
    tools = fields.List(fields.Nested(NamespaceToolSchema))


class BulkPromptChangeSchema(PromptChangeSchema):
    id = fields.UUID(required=True, metadata={"description": "prompt id"})


class NamespacePromptSchema(NamespaceItemSchema):
    arguments = fields.List(fields.Dict())
    overrides = fields.Dict(metadata={"example": {"name": None, "title": None, "description": None}})


class NamespacePromptListSchema(Schema):
    prompts = fields.List(fields.Nested(NamespacePromptSchema))


class EndpointAuthSchema(Schema):
    class Meta:
        unknown = "raise"

    api_key = fields.Boolean(metadata={"description": "require an API key or JWT", "example": True})
    query_param = fields.Boolean(metadata={"description": "also accept ?api_key=", "example": False})


class EndpointInputSchema(Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(required=True, validate=URL_NAME, metadata={"example": "research"})
    namespace_id = fields.UUID(required=True)
    description = fields.String(validate=validate.Length(max=2000))
    auth = fields.Nested(EndpointAuthSchema)


class EndpointPatchSchema(ChangesSomething, EndpointInputSchema):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=True, **kwargs)


class EndpointSchema(Schema):
    id = fields.UUID()
    name = fields.String(metadata={"example": "research"})
    namespace_id = fields.UUID()
    namespace_name = fields.String(metadata={"example": "research"})
    description = fields.String()
    auth = fields.Nested(EndpointAuthSchema)
    urls = fields.Dict(metadata={"example": {"mcp": "/metamcp/research/mcp", "sse": "/metamcp/research/sse",
                                             "openapi": "/metamcp/research/api/openapi.json"}})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class EndpointListSchema(Schema):
    endpoints = fields.List(fields.Nested(EndpointSchema))
