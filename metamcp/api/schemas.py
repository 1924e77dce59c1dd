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


def no_newlines(value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValidationError("Must not contain line breaks or NUL characters.")


def name_validators(regex: re.Pattern[str], error: str) -> list[Any]:
    # no_newlines: Python's `$` also matches before a final newline, PostgreSQL's does not.
    return [validate.Length(min=1, max=64), validate.Regexp(regex, error=error), no_newlines]


_SERVER_NAME = name_validators(
    SERVER_NAME_RE, "Use 1-64 letters, digits, '_' or '-', without '__' (it separates server and tool names).")
URL_NAME = name_validators(URL_NAME_RE, "Use 1-64 letters, digits, '_' or '-'.")


class ChangesSomething:
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
        validate=[validate.Length(max=2048), no_newlines],
        metadata={"example": "http://127.0.0.1:3001/mcp"},
    )
    command = fields.String(
        allow_none=True, validate=[validate.Length(min=1, max=1024), no_newlines],
        metadata={"example": "npx"},
    )
    args = fields.List(
        fields.String(validate=validate.Length(max=4096)),
        validate=validate.Length(max=100),
        metadata={"example": ["-y", "@modelcontextprotocol/server-everything"]},
    )
    env = fields.Dict(
        keys=fields.String(validate=validate.Regexp(ENV_NAME_RE, error="Not a valid variable name.")),
        values=fields.String(validate=[validate.Length(max=8192), no_newlines]),
        validate=validate.Length(max=100),
        metadata={"description": "Encrypted at rest; returned masked", "example": {"API_TOKEN": "secret"}},
    )
    cwd = fields.String(allow_none=True, validate=validate.Length(min=1, max=1024))
    headers = fields.Dict(
        keys=fields.String(validate=validate.Regexp(HEADER_NAME_RE, error="Not a valid header name.")),
        values=fields.String(validate=[validate.Length(max=8192), no_newlines]),
        validate=validate.Length(max=50),
        metadata={"description": "Sent to the upstream; encrypted at rest; returned masked",
                  "example": {"X-Upstream-Key": "secret"}},
    )
    bearer_token = fields.String(
        allow_none=True,
        validate=[validate.Length(min=1, max=8192), no_newlines],
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


class ServerPatchSchema(ChangesSomething, ServerInputSchema):
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
    secrets_error = fields.String(
        allow_none=True,
        metadata={"description": "set when the current ENCRYPTION_KEY cannot decrypt the server's "
                                 "stored secrets: the gateway cannot use it until they are resealed "
                                 "(scripts/servers.py reseal) or entered again"})
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
    unreadable = fields.List(fields.String(), metadata={
        "description": "export with include_secrets only: servers whose secrets the current "
                       "ENCRYPTION_KEY cannot decrypt (exported masked)"})
    warnings = fields.List(fields.String(), metadata={
        "description": "export only: what could not be exported in clear, and why"})


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
