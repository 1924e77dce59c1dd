"""The gateway's `requestState` for 2026-07-28 clients: what it binds (who, where, which request)
and its codec, `mm1.<base64url(json)>.<base64url(HMAC-SHA256)>` keyed from the JWT secret.

Signed, never encrypted: it holds no secret (an upstream's own state is opaque already). Every
retry is verified before anything reaches an upstream (metamcp.mcp.mrtr).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.sessions import Session

PREFIX = "mm1"
#: Derives the state's key from the JWT secret, so no key of its own needs configuring.
KEY_LABEL = b"metamcp/request-state/v1"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def invalid_state(why: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: requestState {why}")


@dataclass(frozen=True)
class Binding:
    """What a state is good for: who (key, or the endpoint when public), where, which request."""

    principal: str
    endpoint: str | None
    method: str
    target: str  #: the exposed tool or prompt name, or the resource URI
    digest: str  #: of the arguments

    @classmethod
    def of(cls, session: Session, method: str, target: str, arguments: dict[str, Any]) -> Binding:
        endpoint = None if session.endpoint_id is None else str(session.endpoint_id)
        principal = f"key:{session.key_id}" if session.key_id is not None else f"endpoint:{endpoint}"
        canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        digest = _b64u(hashlib.sha256(canonical.encode()).digest()[:16])
        return cls(principal, endpoint, method, target, digest)


@dataclass(frozen=True)
class Claims:
    """What a verified state holds besides its binding: the server, and either the upstream's
    own state (a 2026-07-28 upstream) or where its call is parked (a 2025 upstream)."""

    server: str
    upstream_state: str | None = None
    origin: str | None = None
    parked: str | None = None


class StateCodec:
    """`mm1.<base64url(json)>.<base64url(HMAC-SHA256)>`, keyed from the JWT secret that every
    worker and replica shares."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), KEY_LABEL, hashlib.sha256).digest()

    def seal(self, binding: Binding, expiry: float, claims: Claims) -> str:
        payload = {"p": binding.principal, "e": binding.endpoint, "m": binding.method, "t": binding.target,
                   "a": binding.digest, "x": round(expiry, 3), "s": claims.server}
        if claims.parked is not None:
            payload.update(o=claims.origin, k=claims.parked)
        elif claims.upstream_state is not None:
            payload["u"] = claims.upstream_state
        body = _b64u(json.dumps(payload, separators=(",", ":")).encode())
        return f"{PREFIX}.{body}.{self._mac(body)}"

    def open(self, token: Any, binding: Binding, now: float | None = None) -> Claims:
        """The claims of `token` if this gateway sealed it for `binding` and it has not expired;
        else RpcError -32602."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != PREFIX or not hmac.compare_digest(self._mac(parts[1]), parts[2]):
            raise invalid_state("is not one this gateway issued")
        try:
            payload = json.loads(_b64u_decode(parts[1]))
            expiry, server = float(payload["x"]), payload["s"]
        except (ValueError, KeyError, TypeError):
            raise invalid_state("is not one this gateway issued") from None
        if not (expiry > (time.time() if now is None else now)):
            raise invalid_state("has expired")
        sealed = (payload.get("p"), payload.get("e"), payload.get("m"), payload.get("t"), payload.get("a"))
        if sealed != (binding.principal, binding.endpoint, binding.method, binding.target, binding.digest):
            raise invalid_state("belongs to another request (credential, endpoint, method, name or arguments)")
        upstream, origin, parked = payload.get("u"), payload.get("o"), payload.get("k")
        return Claims(str(server), upstream if isinstance(upstream, str) else None,
                      origin if isinstance(origin, str) else None, parked if isinstance(parked, str) else None)

    def _mac(self, body: str) -> str:
        return _b64u(hmac.new(self._key, f"{PREFIX}.{body}".encode(), hashlib.sha256).digest())
