"""`GET /api/v1/audit` (the audit log, filtered, newest first, a cursor per page) and
`GET /api/v1/usage` (calls, errors and p50/p95 duration per key, server or tool)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

from metamcp import audit_query
from metamcp.api.auth import authenticate_request, documented
from metamcp.api.schemas import no_newlines
from metamcp.audit_query import Filters
from metamcp.db import Database

blp = Blueprint("audit", __name__, url_prefix="/api/v1",
                description="The audit log of calls and admin changes, and usage figures drawn from it")
blp.before_request(authenticate_request)
ERRORS = {422: "An invalid filter, limit or cursor"}

_TEXT: list[Any] = [validate.Length(min=1, max=2048), no_newlines]


def _valid_cursor(value: str) -> None:
    try:
        audit_query.decode_cursor(value)
    except ValueError:
        raise ValidationError("Not a cursor of this audit log; use next_cursor of a previous page.") from None


class _Period(Schema):
    """since/until: ISO 8601 times (UTC when no zone is given); until excluded."""

    class Meta:
        unknown = RAISE

    since = fields.DateTime(metadata={"description": "records from this time on (ISO 8601)",
                                      "example": "2026-12-01T00:00:00Z"})
    until = fields.DateTime(metadata={"description": "records before this time (ISO 8601)"})

    @post_load
    def _zoned(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        for name in ("since", "until"):
            if name in data:
                data[name] = audit_query.utc(data[name])
        return data


class AuditQuerySchema(_Period):
    key = fields.Integer(validate=validate.Range(min=1, max=2**31 - 1),
                         metadata={"description": "the id of the API key that called or changed"})
    server = fields.String(validate=_TEXT, metadata={"example": "github"})
    tool = fields.String(validate=_TEXT, metadata={
        "description": "the tool or prompt as the client named it, or the resource URI; for an "
                       "admin change, the id of what changed", "example": "github__search"})
    outcome = fields.String(validate=validate.OneOf(["ok", "tool_error", "error"]))
    kind = fields.String(validate=validate.OneOf(["call", "admin"]))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(validate=[validate.Length(max=200), _valid_cursor],
                           metadata={"description": "next_cursor of the previous page"})


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = fields.DateTime(metadata={"description": "when the request arrived, or the change was made"})
    kind = fields.String(metadata={"example": "call"})
    actor = fields.String(metadata={"description": "key, anonymous (a public endpoint), cli or system"})
    key_id = fields.Integer(allow_none=True)
    key_name = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True, metadata={"description": "the X-Request-Id of the request"})
    session_id = fields.String(allow_none=True)
    endpoint = fields.String(allow_none=True)
    action = fields.String(metadata={"description": "the MCP method of a call, `<entity>.<verb>` of a change",
                                     "example": "tools/call"})
    server = fields.String(allow_none=True)
    target = fields.String(allow_none=True, metadata={"description": "tool, prompt or URI; changed object's id"})
    upstream_name = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True, metadata={"example": "ok"})
    error_code = fields.Integer(allow_none=True, metadata={"description": "the JSON-RPC error code"})
    http_status = fields.Integer(allow_none=True)
    duration_ms = fields.Float(allow_none=True, metadata={"description": "until the response was sent in full"})
    upstream_ms = fields.Float(allow_none=True, metadata={"description": "waiting on the upstream server"})
    bytes = fields.Integer(allow_none=True, metadata={"description": "bytes of the response"})
    before = fields.Raw(allow_none=True, metadata={"description": "an admin change: before, secrets masked"})
    after = fields.Raw(allow_none=True, metadata={"description": "an admin change: after, secrets masked"})
    host = fields.String(allow_none=True)
    pid = fields.Integer(allow_none=True)


class AuditPageSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema))
    next_cursor = fields.String(allow_none=True, metadata={"description": "null on the last page"})


class UsageQuerySchema(_Period):
    by = fields.String(required=True, validate=validate.OneOf(audit_query.USAGE_BY))


class UsageGroupSchema(Schema):
    key_id = fields.Integer(allow_none=True)
    key_name = fields.String(allow_none=True)
    server = fields.String(allow_none=True)
    method = fields.String()
    tool = fields.String(allow_none=True, metadata={"description": "tool, prompt or URI"})
    calls = fields.Integer()
    errors = fields.Integer(metadata={"description": "calls that did not succeed (tool errors included)"})
    tool_errors = fields.Integer(metadata={"description": "calls the tool answered with isError"})
    p50_ms = fields.Float(metadata={"description": "median duration in milliseconds"})
    p95_ms = fields.Float(metadata={"description": "95th percentile of the duration in milliseconds"})


class UsageSchema(Schema):
    by = fields.String()
    groups = fields.List(fields.Nested(UsageGroupSchema))


def _db() -> Database:
    return current_app.extensions["metamcp"].db


def _filters(query: dict[str, Any]) -> Filters:
    return Filters(key_id=query.get("key"), server=query.get("server"), tool=query.get("tool"),
                   outcome=query.get("outcome"), kind=query.get("kind"), since=query.get("since"),
                   until=query.get("until"))


@blp.route("/audit")
class Audit(MethodView):
    @documented(blp, ERRORS, 422)
    @blp.arguments(AuditQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, AuditPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The audit log, newest first

        One entry per `tools/call`, `prompts/get` and `resources/read` served and per admin
        change (keys, servers, namespaces, endpoints; before and after with secrets masked).
        Calls are written in batches: one shows within about a second. Pass `next_cursor` as
        `cursor` for the next page.
        """
        entries, cursor = audit_query.page(_db(), _filters(query), query["limit"], query.get("cursor"))
        return {"entries": entries, "next_cursor": cursor}


@blp.route("/usage")
class Usage(MethodView):
    @documented(blp, ERRORS, 422)
    @blp.arguments(UsageQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, UsageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Calls, errors and p50/p95 duration per key, server or tool

        Drawn from the audit log (so within its retention), most called first.
        """
        return {"by": query["by"], "groups": audit_query.usage(_db(), query["by"], _filters(query))}
