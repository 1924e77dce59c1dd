"""Marshmallow schemas of the REST API: field-by-field validation and the OpenAPI models."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load, validate

from metamcp.servers import TRANSPORT_ALIASES

# The name rules are the database's CHECKs (migrations/0001, 0003), stated here as Regexp and
# Length validators so that the OpenAPI document shows them as `pattern` and `maxLength`.
#: Namespace and endpoint names (they appear in URLs).
URL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Server names: the same, without `__` (it separates server and tool in exposed names).
SERVER_NAME_RE = re.compile(r"^(?!.*__)[A-Za-z0-9_-]{1,64}$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
#: Headers the gateway itself owns on upstream requests.
RESERVED_HEADERS = {"host", "content-length", "content-type", "accept", "mcp-session-id",
                    "mcp-protocol-version", "transfer-encoding", "connection"}


def _no_newlines(value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValidationError("Must not contain line breaks or NUL characters.")


def _name_validators(regex: re.Pattern[str], error: str) -> list[Any]:
    # _no_newlines: Python's `$` also matches before a final newline, PostgreSQL's does not.
    return [validate.Length(min=1, max=64), validate.Regexp(regex, error=error), _no_newlines]


_SERVER_NAME = _name_validators(
    SERVER_NAME_RE, "Use 1-64 letters, digits, '_' or '-', without '__' (it separates server and tool names).")
_URL_NAME = _name_validators(URL_NAME_RE, "Use 1-64 letters, digits, '_' or '-'.")


class _ChangesSomething:
    """A PATCH body must name at least one field: `{}` (or no body) changes nothing and is
    more likely a client bug than an intent."""

    @pre_load
    def _not_empty(self, data: Any, **_: Any) -> Any:
        if not data:
            raise ValidationError("The body is empty; send at least one field to change.")
        return data


class TokenRequestSchema(Schema):
    api_key = fields.String(
        required=True,
        validate=validate.Length(min=1, max=512),
        metadata={"description": "An API key created with scripts/keys.py", "example": "mcp_9mQ..."},
    )


class TokenResponseSchema(Schema):
    access_token = fields.String(metadata={"example": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..."})
    token_type = fields.String(metadata={"example": "Bearer"})
    expires_in = fields.Integer(metadata={"description": "Lifetime in seconds", "example": 900})


class ServerInputSchema(Schema):
    """A server definition as clients send it (POST/PUT; every field optional for PATCH)."""

    class Meta:
        # Reject misspelled fields rather than silently dropping them.
        unknown = "raise"

    name = fields.String(required=True, validate=_SERVER_NAME, metadata={"example": "everything"})
    description = fields.String(validate=validate.Length(max=2000), metadata={"example": "Reference server"})
    transport = fields.String(
        required=True,
        validate=validate.OneOf(sorted(TRANSPORT_ALIASES)),
        metadata={"description": "streamable_http, sse or stdio", "example": "streamable_http"},
    )
    url = fields.String(
        allow_none=True,
        validate=[validate.Length(max=2048), _no_newlines],
        metadata={"example": "http://127.0.0.1:3001/mcp"},
    )
    command = fields.String(
        allow_none=True, validate=[validate.Length(min=1, max=1024), _no_newlines],
        metadata={"example": "npx"},
    )
    args = fields.List(
        fields.String(validate=validate.Length(max=4096)),
        validate=validate.Length(max=100),
        metadata={"example": ["-y", "@modelcontextprotocol/server-everything"]},
    )
    env = fields.Dict(
        keys=fields.String(validate=validate.Regexp(ENV_NAME_RE, error="Not a valid variable name.")),
        values=fields.String(validate=[validate.Length(max=8192), _no_newlines]),
        validate=validate.Length(max=100),
        metadata={"description": "Encrypted at rest; returned masked", "example": {"API_TOKEN": "secret"}},
    )
    cwd = fields.String(allow_none=True, validate=validate.Length(min=1, max=1024))
    headers = fields.Dict(
        keys=fields.String(validate=validate.Regexp(HEADER_NAME_RE, error="Not a valid header name.")),
        values=fields.String(validate=[validate.Length(max=8192), _no_newlines]),
        validate=validate.Length(max=50),
        metadata={"description": "Sent to the upstream; encrypted at rest; returned masked",
                  "example": {"X-Upstream-Key": "secret"}},
    )
    bearer_token = fields.String(
        allow_none=True,
        validate=[validate.Length(min=1, max=8192), _no_newlines],
        metadata={"description": "Sent upstream as Authorization: Bearer; encrypted; returned masked"},
    )
    is_active = fields.Boolean(metadata={"example": True})

    @pre_load
    def _protocol_alias(self, data: Any, **_: Any) -> Any:
        """The Rust port's `"protocol": "http"` means transport streamable_http."""
        if isinstance(data, dict) and "protocol" in data and "transport" not in data:
            data = dict(data)
            data["transport"] = data.pop("protocol")
        return data

    @post_load
    def _normalize(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if "transport" in data:
            data["transport"] = TRANSPORT_ALIASES[data["transport"]]
        reserved = sorted(h for h in data.get("headers") or {} if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValidationError({"headers": [f"The gateway sets these itself: {', '.join(reserved)}."]})
        return data


class ServerPatchSchema(_ChangesSomething, ServerInputSchema):
    """Some fields of a server definition (PATCH)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=True, **kwargs)


class ServerSchema(Schema):
    """A server as the API returns it; secrets are masked."""

    class Meta:
        unknown = EXCLUDE

    id = fields.UUID(metadata={"example": "6f1c2b1e-8f7a-4c1e-9a59-0b1f3f7c2d10"})
    name = fields.String(metadata={"example": "everything"})
    description = fields.String()
    transport = fields.String(metadata={"example": "streamable_http"})
    url = fields.String(allow_none=True, metadata={"example": "http://127.0.0.1:3001/mcp"})
    command = fields.String(allow_none=True)
    args = fields.List(fields.String())
    env = fields.Dict(keys=fields.String(), values=fields.String(), metadata={"example": {"API_TOKEN": "****"}})
    cwd = fields.String(allow_none=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(),
                          metadata={"example": {"X-Upstream-Key": "****"}})
    bearer_token = fields.String(allow_none=True, metadata={"example": "****abcd"})
    is_active = fields.Boolean()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    process = fields.Dict(
        allow_none=True,
        metadata={"description": "stdio only: this worker's child (running, pid, restarts, last_error)",
                  "example": {"running": True, "pid": 4242, "restarts": 0, "last_error": None}},
    )


class ServerListSchema(Schema):
    servers = fields.List(fields.Nested(ServerSchema))


class HealthSchema(Schema):
    """Liveness: answered from memory; no names, no database, no upstream."""

    status = fields.String(metadata={"example": "ok"})
    version = fields.String(metadata={"example": "0.1.0"})


class ReadySchema(Schema):
    status = fields.String(metadata={"example": "ready"})
    version = fields.String(metadata={"example": "0.1.0"})


class HealthDetailSchema(Schema):
    """This worker's view: each worker holds its own upstream sessions and children."""

    status = fields.String(metadata={"example": "ok", "description": "ok, or unavailable when not ready"})
    version = fields.String(metadata={"example": "0.1.0"})
    worker = fields.Dict(metadata={"example": {"pid": 4242}})
    database = fields.Dict(metadata={"example": {
        "reachable": True, "migrations_applied": True, "problem": None,
        "pool": {"max": 10, "in_use": 1, "idle": 1}}})
    sessions = fields.Dict(metadata={"example": {"cached": 12, "idle_timeout": 86400.0}})
    upstreams = fields.List(fields.Dict(), metadata={
        "description": "Each active server's last known state in this worker (never pinged here; "
                       "unknown until this worker used it); stdio servers add their child process",
        "example": [
            {"name": "one", "transport": "streamable_http", "status": "ok", "last_error": None,
             "checked_at": 1764000000.0},
            {"name": "files", "transport": "stdio", "status": "unknown", "last_error": None,
             "checked_at": None,
             "process": {"running": False, "pid": None, "restarts": 0, "last_error": None}}]})


class ToolListSchema(Schema):
    tools = fields.List(fields.Dict(), metadata={"description": "The upstream's tools, as it lists them"})


class LogsSchema(Schema):
    server = fields.String(metadata={"example": "files"})
    process = fields.Dict(allow_none=True)
    lines = fields.List(fields.String(), metadata={"example": ["Secure MCP Filesystem Server running on stdio"]})


class ClientConfigSchema(Schema):
    """The config file format of MCP clients; entries are checked one by one on import."""

    mcpServers = fields.Dict(  # noqa: N815 - the name clients use
        keys=fields.String(), values=fields.Raw(), required=True,
        metadata={"description": "name -> {command, args, env, cwd} or {url, headers, type}"},
    )


class ImportQuerySchema(Schema):
    partial_import = fields.Boolean(
        data_key="partial", load_default=False,
        metadata={"description": "import the valid entries even if some are not"})


class ExportQuerySchema(Schema):
    include_secrets = fields.Boolean(load_default=False,
                                     metadata={"description": "show secrets in clear instead of masked"})


class ImportReportSchema(Schema):
    created = fields.List(fields.String(), metadata={"example": ["files"]})
    updated = fields.List(fields.String(), metadata={"example": ["remote"]})
    skipped = fields.List(fields.Dict(), metadata={"example": [{"name": "bad name", "reason": "name: ..."}]})


class ExecuteSchema(Schema):
    class Meta:
        unknown = "raise"

    arguments = fields.Dict(keys=fields.String(), load_default=dict, metadata={"example": {"message": "hi"}})


class ToolResultSchema(Schema):
    content = fields.List(fields.Dict())
    structuredContent = fields.Dict(allow_none=True)  # noqa: N815 - the MCP field name
    isError = fields.Boolean()  # noqa: N815 - the MCP field name


class ErrorSchema(Schema):
    error = fields.String(metadata={"example": "not_found"})
    message = fields.String(metadata={"example": "No server with id 6f1c2b1e-8f7a-4c1e-9a59-0b1f3f7c2d10."})
    details = fields.Raw(allow_none=True)


# --- Namespaces, their tools, endpoints --------------------------------------------------

#: A tool's exposed name when overridden in a namespace.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _status_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(["active", "inactive"]),
                         metadata={"description": "active or inactive", "example": "inactive"}, **kwargs)


class NamespaceInputSchema(Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(required=True, validate=_URL_NAME, metadata={"example": "research"})
    description = fields.String(validate=validate.Length(max=2000), metadata={"example": "Search and files"})


class NamespacePatchSchema(_ChangesSomething, NamespaceInputSchema):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(partial=True, **kwargs)


class NamespaceServerSchema(Schema):
    id = fields.UUID()
    name = fields.String(metadata={"example": "files"})
    status = fields.String(metadata={"description": "status in this namespace", "example": "active"})
    is_active = fields.Boolean(metadata={"description": "the server's own switch"})


class NamespaceSchema(Schema):
    id = fields.UUID(metadata={"example": "0b6f2a8e-3c51-4a57-9d0e-6f7d1a2b3c4d"})
    name = fields.String(metadata={"example": "research"})
    description = fields.String()
    servers = fields.List(fields.Nested(NamespaceServerSchema))
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class NamespaceListSchema(Schema):
    namespaces = fields.List(fields.Nested(NamespaceSchema))


class AttachSchema(Schema):
    class Meta:
        unknown = "raise"

    status = _status_field(required=True)


class ToolChangeSchema(_ChangesSomething, Schema):
    """Status and overrides of one tool in a namespace; annotations merge (null drops a key)."""

    class Meta:
        unknown = "raise"

    status = _status_field()
    name = fields.String(
        allow_none=True,
        validate=_name_validators(TOOL_NAME_RE, "Use 1-64 letters, digits, '_', '.' or '-'."),
        metadata={"description": "name clients see; null restores <server>__<tool>", "example": "search"},
    )
    title = fields.String(allow_none=True, validate=validate.Length(max=200), metadata={"example": "Search"})
    description = fields.String(allow_none=True, validate=validate.Length(max=10_000))
    annotations = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), allow_none=True,
                              metadata={"example": {"readOnlyHint": True}})


class BulkToolChangeSchema(ToolChangeSchema):
    id = fields.UUID(required=True, metadata={"description": "tool id"})


class NamespaceToolSchema(Schema):
    id = fields.UUID()
    server_id = fields.UUID()
    server_name = fields.String(metadata={"example": "files"})
    server_status = fields.String(metadata={"description": "the server's status in this namespace"})
    original_name = fields.String(metadata={"example": "search_files"})
    name = fields.String(metadata={"description": "exposed name", "example": "files__search_files"})
    status = fields.String(metadata={"example": "active"})
    title = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    annotations = fields.Dict()
    input_schema = fields.Dict()
    overrides = fields.Dict(metadata={"example": {"name": None, "title": None, "description": None,
                                                  "annotations": {}}})


class NamespaceToolListSchema(Schema):
    tools = fields.List(fields.Nested(NamespaceToolSchema))


class EndpointAuthSchema(Schema):
    class Meta:
        unknown = "raise"

    api_key = fields.Boolean(metadata={"description": "require an API key or JWT", "example": True})
    query_param = fields.Boolean(metadata={"description": "also accept ?api_key=", "example": False})


class EndpointInputSchema(Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(required=True, validate=_URL_NAME, metadata={"example": "research"})
    namespace_id = fields.UUID(required=True)
    description = fields.String(validate=validate.Length(max=2000))
    auth = fields.Nested(EndpointAuthSchema)


class EndpointPatchSchema(_ChangesSomething, EndpointInputSchema):
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


# --- API keys ----------------------------------------------------------------------------



#: Key names: 1-200 characters once surrounding spaces are trimmed (the CHECK uses btrim).
_KEY_NAME: list[Any] = [
    validate.Length(min=1, max=200), validate.Regexp(re.compile(r"^ *[^ ]"), error="Must not be blank."),
    _no_newlines,
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


class KeyPatchSchema(_ChangesSomething, Schema):
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
