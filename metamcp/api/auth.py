"""`POST /api/v1/auth/token`, and the credential check every other /api/v1 route runs first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp import observe
from metamcp.api.schemas import ErrorSchema, TokenRequestSchema, TokenResponseSchema
from metamcp.authn import Authenticator, Principal
from metamcp.errors import Forbidden, Unauthorized
from metamcp.limits import Limits

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


def client_address() -> str:
    """The client's address for per-address limits: REMOTE_ADDR, unless the operator declared
    METAMCP_FORWARDED_HOPS trusted proxies, whose last entries in X-Forwarded-For are theirs
    (entries further left are the client's to forge, so they are never used)."""
    hops = current_app.extensions["metamcp"].settings.forwarded_hops
    if hops:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.remote_addr or "unknown"


def limited_authentication(credential: str) -> Principal:
    """authenticate() within the limits: 429 for an address that failed too often (before the
    credential is checked, so a guesser learns nothing), each failure counted against its
    address, then the key's request rate. Raises Unauthorized or LimitExceeded."""
    services = current_app.extensions["metamcp"]
    limits: Limits = services.limits
    address = client_address()
    limits.check_address(address)
    try:
        principal = services.authenticator.authenticate(credential)
    except Unauthorized:
        limits.auth_failed(address)
        raise
    _observed(principal)
    limits.check_key(principal)
    return principal


def _observed(principal: Principal) -> None:
    """The request's record names its caller (the key's id and name, never the key)."""
    observation = observe.current()
    if observation is not None:
        observation.key_id, observation.key_name, observation.role = principal.key_id, principal.key_name, principal.role


def authenticate_request() -> None:
    """before_request of every admin blueprint: 401 without a valid credential, 429 over a
    limit, 403 for a client key (limited to namespaces or not). Returns nothing: Flask would
    take a value as the response."""
    credential = request_credential()
    if credential is None:
        raise Unauthorized("Send 'Authorization: Bearer <token or API key>' or 'X-API-Key: <API key>'.")
    principal = limited_authentication(credential)
    if not principal.is_admin:
        raise Forbidden(f"{ADMIN_ONLY}.", {"role": principal.role})


def authenticator() -> Authenticator:
    return current_app.extensions["metamcp"].authenticator


def documented(blp: Blueprint, descriptions: dict[int, str], *statuses: int) -> Callable[[Any], Any]:
    """OpenAPI of a protected view: its security, 401, 403 and the given error statuses."""

    def decorate(view: Any) -> Any:
        view = blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credential")(view)
        view = blp.alt_response(403, schema=ErrorSchema, description=f"A client key: {ADMIN_ONLY}")(view)
        view = blp.alt_response(429, schema=ErrorSchema,
                                description="Over the key's request rate, or too many failed "
                                            "authentications from this address (see Retry-After)")(view)
        for status in statuses:
            view = blp.alt_response(status, schema=ErrorSchema, description=descriptions[status])(view)
        return blp.doc(security=SECURITY)(view)

    return decorate


@blp.route("/token")
class Token(MethodView):
    @blp.arguments(TokenRequestSchema, example={"api_key": "mcp_9mQ..."})
    @blp.response(200, TokenResponseSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Unknown or inactive API key")
    @blp.alt_response(429, schema=ErrorSchema,
                      description="Too many failed attempts from this address, or over the key's rate")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Exchange an API key for a short-lived JWT

        Use the token as `Authorization: Bearer <access_token>` until it expires.
        """
        auth = authenticator()
        limits: Limits = current_app.extensions["metamcp"].limits
        address = client_address()
        limits.check_address(address)
        try:
            token, principal = auth.exchange(body["api_key"])
        except Unauthorized:
            limits.auth_failed(address)
            raise
        _observed(principal)
        limits.check_key(principal)
        return {"access_token": token, "token_type": "Bearer", "expires_in": auth.jwt_lifetime}
