"""Who is calling: API keys and JWTs checked against an in-process cache of the keys table.

The cache makes authentication free of database queries once warm; metamcp.notify clears it
in every process when a key changes, and a TTL bounds staleness if notifications stop. An
entry past its TTL keeps serving while the database is unreachable (a change notification,
which revokes, drops entries instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from metamcp import crypto, repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable, Unauthorized

logger = logging.getLogger(__name__)

#: Change-notification topic of the api_keys table.
#: Write last_used_at at most this often per key, to keep writes off the hot path.
TOUCH_INTERVAL = 60.0
#: Roles of API keys: admin manages the gateway (and can run commands on its host through
#: stdio servers); client only uses MCP.
ADMIN, CLIENT = "admin", "client"
ROLES = (ADMIN, CLIENT)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the API key it holds, directly or through a JWT."""

    key_id: int
    key_name: str
    #: None: an unscoped key; else the only namespaces it may reach (possibly none).
    namespaces: frozenset[UUID] | None = None
    role: str = CLIENT
    #: Requests per minute for this key; None: the METAMCP_RATE_LIMIT default.
    rate_limit: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_scoped(self) -> bool:
        return self.namespaces is not None

    def may_reach(self, namespace_id: UUID) -> bool:
        return self.namespaces is None or namespace_id in self.namespaces


@dataclass(frozen=True)
class _CachedKey:
    key_id: int
    name: str
    is_active: bool
    namespaces: frozenset[UUID] | None
    role: str
    rate_limit: int | None
    expires: float

    def principal(self) -> Principal:
        return Principal(self.key_id, self.name, self.namespaces, self.role, self.rate_limit)


class Authenticator:
    def __init__(self, db: Database, jwt_secret: str, jwt_lifetime: int, ttl: float) -> None:
        self._db = db
        self._secret = jwt_secret
        self.jwt_lifetime = jwt_lifetime
        self._ttl = ttl
        self._by_hash: dict[bytes, _CachedKey] = {}
        self._by_id: dict[int, _CachedKey] = {}
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._by_hash.clear()
            self._by_id.clear()

    def expire(self) -> None:
        """Re-read every key at its next use, but keep serving it if the database is away."""
        with self._lock:
            self._by_hash = {h: replace(e, expires=0.0) for h, e in self._by_hash.items()}
            self._by_id = {i: replace(e, expires=0.0) for i, e in self._by_id.items()}

    def on_change(self, message: dict[str, Any]) -> None:
        """A key changed (drop all: revocation holds), or the listener is back (expire all)."""
        if message.get("resync"):
            self.expire()
        else:
            self.invalidate()

    def authenticate(self, credential: str) -> Principal:
        """A raw `mcp_...` API key or a JWT issued for one; raises Unauthorized."""
        if crypto.looks_like_api_key(credential):
            return self._check_api_key(credential)
        try:
            claims = crypto.verify_jwt(credential, self._secret)
        except crypto.CryptoError:
            raise Unauthorized("The token is invalid or expired; get a new one at /api/v1/auth/token.") from None
        entry = self._by_id.get(claims.key_id)
        if entry is None or entry.expires < time.monotonic():
            entry = self._refresh(entry, lambda cur: (repository.get_key(cur, claims.key_id), None))
        if entry is None or not entry.is_active:
            raise Unauthorized("The API key behind this token is inactive or deleted.")
        # The key's current role decides; a token that states another one was issued before
        # the role changed and is refused as stale rather than silently reinterpreted.
        if claims.role != entry.role:
            raise Unauthorized("The role of the API key behind this token changed; get a new token "
                               "at /api/v1/auth/token.")
        return entry.principal()

    def exchange(self, api_key: str) -> tuple[str, Principal]:
        """Trade an active API key for a JWT."""
        if not crypto.looks_like_api_key(api_key):
            raise Unauthorized("Unknown or inactive API key.")
        principal = self._check_api_key(api_key)
        token = crypto.issue_jwt(principal.key_id, self._secret, self.jwt_lifetime, role=principal.role)
        return token, principal

    def _check_api_key(self, plain: str) -> Principal:
        key_hash = crypto.hash_api_key(plain)
        entry = self._by_hash.get(key_hash)
        if entry is None or entry.expires < time.monotonic():
            entry = self._refresh(entry, lambda cur: (repository.find_key_by_hash(cur, key_hash), key_hash))
        if entry is None or not entry.is_active:
            raise Unauthorized("Unknown or inactive API key.")
        self._touch(entry.key_id)
        return entry.principal()

    def _refresh(self, stale: _CachedKey | None,
                 read: Callable[[Any], tuple[dict | None, bytes | None]]) -> _CachedKey | None:
        """Read a key again; with the database away, a stale entry serves (none: 503)."""
        try:
            with self._db.transaction() as cur:
                row, key_hash = read(cur)
                return self._remember(cur, row, key_hash)
        except DatabaseUnavailable:
            if stale is None:
                raise
            return stale

    def _remember(self, cur: Any, row: dict | None, key_hash: bytes | None) -> _CachedKey | None:
        if row is None:
            return None
        scope = frozenset(repository.key_namespace_ids(cur, row["id"])) if row["scoped"] else None
        entry = _CachedKey(row["id"], row["name"], row["is_active"], scope, row["role"], row["rate_limit"],
                           time.monotonic() + self._ttl)
        with self._lock:
            self._by_id[entry.key_id] = entry
            if key_hash is not None:
                self._by_hash[key_hash] = entry
        return entry

    def _touch(self, key_id: int) -> None:
        now = time.monotonic()
        if now - self._touched.get(key_id, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        self._touched[key_id] = now
        try:
            with self._db.transaction() as cur:
                repository.touch_key(cur, key_id)
        except DatabaseUnavailable:
            pass  # bookkeeping only: never fails a request (the outage is logged once)
