"""`POST /api/v1/auth/token`, and the credential check every other /api/v1 route runs first."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.schemas import ErrorSchema, TokenRequestSchema, TokenResponseSchema
from metamcp.authn import Authenticator, Principal
from metamcp.errors import Unauthorized

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


def authenticate_request() -> None:
    """before_request of protected blueprints: sets g.principal or answers 401."""
    credential = request_credential()
    if credential is None:
        raise Unauthorized("Send 'Authorization: Bearer <token or API key>' or 'X-API-Key: <API key>'.")
    g.principal = authenticator().authenticate(credential)


def authenticator() -> Authenticator:
    return current_app.extensions["metamcp"].authenticator


def current_principal() -> Principal:
    return g.principal


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
