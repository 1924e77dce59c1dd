"""`POST /api/v1/auth/token`, and the credential check every other /api/v1 route runs first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.schemas import ErrorSchema, TokenRequestSchema, TokenResponseSchema
from metamcp.authn import Authenticator
from metamcp.errors import Forbidden, Unauthorized

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Exchange an API key for a JWT")

#: OpenAPI security requirement of every protected route.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


def request_credential() -> str | None:
    """The caller's credential: `Authorization: Bearer <jwt|key>` or `X-API-Key: <key>`."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = request.headers.get("X-API-Key", "").strip()
    return api_key or None


#: What the OpenAPI document and a refused client key are told about the admin API.
ADMIN_ONLY = "The admin API needs an admin key; client keys may only use MCP (/mcp and /metamcp/<endpoint>/...)"


def authenticate_request() -> None:
    """before_request of every admin blueprint: 401 without a valid credential, 403 for a
    client key (limited to namespaces or not). Returns nothing: Flask would take a value as
    the response."""
    credential = request_credential()
    if credential is None:
        raise Unauthorized("Send 'Authorization: Bearer <token or API key>' or 'X-API-Key: <API key>'.")
    principal = authenticator().authenticate(credential)
    if not principal.is_admin:
        raise Forbidden(f"{ADMIN_ONLY}.", {"role": principal.role})


def authenticator() -> Authenticator:
    return current_app.extensions["metamcp"].authenticator


def documented(blp: Blueprint, descriptions: dict[int, str], *statuses: int) -> Callable[[Any], Any]:
    """OpenAPI of a protected view: its security, 401, 403 and the given error statuses."""

    def decorate(view: Any) -> Any:
        view = blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credential")(view)
        view = blp.alt_response(403, schema=ErrorSchema, description=f"A client key: {ADMIN_ONLY}")(view)
        for status in statuses:
            view = blp.alt_response(status, schema=ErrorSchema, description=descriptions[status])(view)
        return blp.doc(security=SECURITY)(view)

    return decorate


@blp.route("/token")
class Token(MethodView):
    @blp.arguments(TokenRequestSchema, example={"api_key": "mcp_9mQ..."})
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Unknown or inactive API key")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Exchange an API key for a short-lived JWT

        Use the token as `Authorization: Bearer <access_token>` until it expires.
        """
        auth = authenticator()
        token, _principal = auth.exchange(body["api_key"])
        return {"access_token": token, "token_type": "Bearer", "expires_in": auth.jwt_lifetime}
