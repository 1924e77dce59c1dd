"""The upstream server registry: validation across fields, secrets sealed at rest, masking.

Views hand in fields already checked one by one (metamcp.api.schemas); this module owns the
rules that span fields, the encryption of bearer tokens, header and env values, and the
change notification that tells every process to reload.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from metamcp import audit_changes, repository
from metamcp.addresses import AddressPolicy, AddressRefused, resolve
from metamcp.crypto import CryptoError, SecretBox, mask_secret
from metamcp.db import Database
from metamcp.errors import MetaMCPError, NotFound, ValidationFailed
from metamcp.notify import Topic
from metamcp.stdio_policy import StdioPolicy

HTTP_TRANSPORTS = ("streamable_http", "sse")
#: Accepted spellings of `transport` (the Rust port sends "protocol": "http").
TRANSPORT_ALIASES = {
    "streamable_http": "streamable_http",
    "streamable-http": "streamable_http",
    "http": "streamable_http",
    "sse": "sse",
    "stdio": "stdio",
}
DEFAULTS: dict[str, Any] = {
    "description": "",
    "url": None,
    "command": None,
    "args": [],
    "env": {},
    "cwd": None,
    "headers": {},
    "bearer_token": None,
    "is_active": True,
}
#: Seconds registration waits for a host name to resolve (then the connect-time check decides).
RESOLVE_TIMEOUT = 3.0
#: Fields a change may touch on a stdio server the policy no longer allows, to switch it off.
SWITCH_OFF_FIELDS = frozenset({"is_active", "name", "description"})
logger = logging.getLogger(__name__)


class Undecryptable(MetaMCPError):
    """A server's stored secrets were sealed under another ENCRYPTION_KEY."""

    status, code = 409, "undecryptable_secrets"


def unreadable_message(name: str) -> str:
    """What admins and MCP clients are told of a server whose secrets this key cannot open
    (names the server and the cause, never a secret)."""
    return (f"The stored secrets of server {name!r} cannot be decrypted with the current "
            "ENCRYPTION_KEY (was it changed?); reseal them with `scripts/servers.py reseal "
            "--old-key-file FILE`, or enter them again with PUT or PATCH.")


@dataclass(frozen=True)
class Unreadable:
    """A server left out of the gateway because its secrets cannot be decrypted."""

    name: str
    transport: str
    message: str


@dataclass(frozen=True)
class Loaded:
    """The registry as the gateway reads it: usable definitions, and the servers it cannot use."""

    configs: list[ServerConfig]
    unreadable: list[Unreadable]


@dataclass(frozen=True)
class ServerConfig:
    """A server as the gateway needs it: secrets decrypted. Never serialized to clients."""

    id: UUID
    name: str
    transport: str
    url: str | None
    command: str | None
    args: list[str]
    env: dict[str, str]
    cwd: str | None
    headers: dict[str, str]
    bearer_token: str | None
    is_active: bool


def check_server(fields: Mapping[str, Any]) -> None:
    """Rules spanning fields, applied to the complete (merged) server."""
    errors: dict[str, list[str]] = {}
    transport = fields["transport"]
    if transport in HTTP_TRANSPORTS:
        url = fields.get("url")
        if not url:
            errors["url"] = [f"Required when transport is {transport}."]
        else:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                errors["url"] = ["Must be an absolute http:// or https:// URL with a host."]
    elif not fields.get("command"):
        errors["command"] = ["Required when transport is stdio."]
    if errors:
        # The message names what is wrong (one field at most, in practice): "see details" alone
        # sent a user hunting for which part of the definition was missing.
        what = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        raise ValidationFailed(f"The server definition is not valid: {what}", errors)


def check_address(fields: Mapping[str, Any], policy: AddressPolicy) -> None:
    """An HTTP server's URL must point where the address policy allows (422 naming the rule).

    A host name is resolved (for at most RESOLVE_TIMEOUT) and refused when any address it
    resolves to is; one that does not resolve now is accepted, since every connection checks
    the addresses it actually uses.
    """
    url = fields.get("url")
    if fields["transport"] not in HTTP_TRANSPORTS or not url:
        return
    host = urlsplit(url).hostname
    if not host:
        return
    try:
        policy.check_host(host, lambda name: resolve(name, RESOLVE_TIMEOUT))
    except AddressRefused as e:
        raise ValidationFailed(f"The server's URL is refused: {e}.", {"url": [f"{e}."]}) from None


class ServerRegistry:
    def __init__(self, db: Database, box: SecretBox, policy: AddressPolicy | None = None,
                 stdio: StdioPolicy | None = None) -> None:
        self._db = db
        self._box = box
        #: Where upstream URLs may point (the default refuses only the always-refused ranges).
        self.policy = policy or AddressPolicy()
        self._stdio = stdio or StdioPolicy()

    # --- reads ---------------------------------------------------------------------------

    def list_all(self) -> list[dict[str, Any]]:
        with self._db.transaction() as cur:
            return [self._public(row) for row in repository.list_servers(cur)]

    def get(self, server_id: UUID) -> dict[str, Any]:
        with self._db.transaction() as cur:
            return self._public(self._existing(cur, server_id))

    def configs(self, active_only: bool = True) -> list[ServerConfig]:
        """Decrypted definitions for the gateway; a server whose secrets cannot be decrypted
        (ENCRYPTION_KEY changed) is left out and logged, never failing the others."""
        return self.load(active_only).configs

    def load(self, active_only: bool = True) -> Loaded:
        """Decrypted definitions, and the servers left out because this ENCRYPTION_KEY cannot
        open their secrets (each logged), so callers can show them as errors, not hide them."""
        with self._db.transaction() as cur:
            rows = repository.list_servers(cur)
        configs, unreadable = [], []
        for row in rows:
            if not (row["is_active"] or not active_only):
                continue
            try:
                configs.append(self._config(row))
            except Undecryptable as e:
                logger.error("%s", e.message)
                unreadable.append(Unreadable(row["name"], row["transport"], e.message))
        return Loaded(configs, unreadable)

    def unreadable(self) -> list[str]:
        """Names of the servers (active or not) whose secrets this ENCRYPTION_KEY cannot open."""
        with self._db.transaction() as cur:
            rows = repository.list_servers(cur)
        return [row["name"] for row in rows if not self._readable(row)]

    # --- writes --------------------------------------------------------------------------

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**DEFAULTS, **self._seal(fields, {})}
        check_server(merged)
        check_address(merged, self.policy)
        self._check_stdio(merged)
        with self._db.transaction() as cur:
            row = self._write(cur, None, merged)
        return self._public(row)

    def replace(self, server_id: UUID, fields: Mapping[str, Any]) -> dict[str, Any]:
        return self._update(server_id, fields, base=DEFAULTS)

    def update(self, server_id: UUID, fields: Mapping[str, Any]) -> dict[str, Any]:
        return self._update(server_id, fields, base=None)

    def delete(self, server_id: UUID) -> None:
        with self._db.transaction() as cur:
            row = self._existing(cur, server_id)
            if not repository.delete_server(cur, server_id):
                raise NotFound(f"No server with id {server_id}.")
            repository.notify_change(cur, Topic.SERVERS, id=server_id)
            audit_changes.record(cur, "server.delete", server_id, row, None, server=row["name"])

    def config(self, server_id: UUID) -> ServerConfig:
        """One server's decrypted definition, active or not."""
        with self._db.transaction() as cur:
            return self._config(self._existing(cur, server_id))

    # --- internals -----------------------------------------------------------------------

    def _update(
        self, server_id: UUID, fields: Mapping[str, Any], base: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        with self._db.transaction() as cur:
            current = self._existing(cur, server_id)
            if base is None:
                base = {column: current[column] for column in repository.SERVER_COLUMNS}
            merged = {**base, **self._seal(fields, current)}
            check_server(merged)
            check_address(merged, self.policy)
            if merged["is_active"] or not set(fields) <= SWITCH_OFF_FIELDS:
                self._check_stdio(merged)
            row = self._write(cur, server_id, merged, current)
        return self._public(row)

    def check_stdio(self, fields: Mapping[str, Any]) -> None:
        """The stdio policy on a server's plain fields (env in clear: a PATH set there decides
        which file a bare command names); StdioRefused (422) naming the setting that refuses."""
        if fields.get("transport") == "stdio":
            self._stdio.executable(fields.get("command") or "", fields.get("cwd"), fields.get("env") or {})

    def _check_stdio(self, merged: Mapping[str, Any]) -> None:
        if merged["transport"] != "stdio":
            return
        try:
            env = {name: self._box.decrypt(value) for name, value in (merged["env"] or {}).items()}
        except CryptoError:
            env = {}  # sealed under another key: the start checks again with what it can decrypt
        self.check_stdio({**merged, "env": env})

    def _write(self, cur: Any, server_id: UUID | None, fields: dict[str, Any],
               before: Mapping[str, Any] | None = None) -> dict[str, Any]:
        taken = f"A server named {fields['name']!r} already exists; choose another name."
        with repository.conflict_as(cur, taken):
            if server_id is None:
                row = repository.insert_server(cur, fields)
            else:
                updated = repository.update_server(cur, server_id, fields)
                if updated is None:
                    raise NotFound(f"No server with id {server_id}.")
                row = updated
        repository.notify_change(cur, Topic.SERVERS, id=row["id"])
        # Rows as stored (secrets sealed): audit_changes masks them all the same.
        audit_changes.record(cur, "server.create" if server_id is None else "server.update", row["id"],
                             before, row, server=row["name"])
        return row

    @staticmethod
    def _existing(cur: Any, server_id: UUID) -> dict[str, Any]:
        row = repository.get_server(cur, server_id)
        if row is None:
            raise NotFound(f"No server with id {server_id}.")
        return row

    def _seal_value(self, plain: str, stored: str | None) -> str:
        """Encrypt a secret; a masked value sent back unchanged keeps the stored secret."""
        # An unreadable secret is shown as "****" (_public): sent back, it is kept too.
        if stored is not None and plain.startswith("****") and (self._mask(stored) or "****") == plain:
            return stored
        return self._box.encrypt(plain)

    def _seal(self, fields: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
        """Encrypt the secrets among `fields` (others pass through unchanged)."""
        sealed = dict(fields)
        for column in ("headers", "env"):
            if column in fields:
                stored = current.get(column) or {}
                sealed[column] = {
                    name: self._seal_value(value, stored.get(name))
                    for name, value in (fields[column] or {}).items()
                }
        if fields.get("bearer_token") is not None:
            sealed["bearer_token"] = self._seal_value(fields["bearer_token"], current.get("bearer_token"))
        return sealed

    def _mask(self, stored: str) -> str | None:
        """A stored secret as shown (masked); None when the current key cannot open it."""
        try:
            return mask_secret(self._box.decrypt(stored))
        except CryptoError:
            return None

    def _readable(self, row: Mapping[str, Any]) -> bool:
        try:
            self._decrypted(row)
        except CryptoError:
            return False
        return True

    def _public(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row as the admin API shows it: secrets masked, and `secrets_error` when one of
        them does not open with the current key (each secret decrypted once)."""
        unreadable = False

        def masked(stored: str) -> str:
            nonlocal unreadable
            shown = self._mask(stored)
            if shown is None:
                unreadable = True
                return "****"  # sealed under another ENCRYPTION_KEY: still never shown
            return shown

        public = dict(row)
        public["headers"] = {k: masked(v) for k, v in row["headers"].items()}
        public["env"] = {k: masked(v) for k, v in row["env"].items()}
        token = row["bearer_token"]
        public["bearer_token"] = None if token is None else masked(token)
        public["secrets_error"] = unreadable_message(row["name"]) if unreadable else None
        return public

    def _config(self, row: Mapping[str, Any]) -> ServerConfig:
        try:
            return self._decrypted(row)
        except CryptoError:
            raise Undecryptable(unreadable_message(row["name"])) from None

    def _decrypted(self, row: Mapping[str, Any]) -> ServerConfig:
        token = row["bearer_token"]
        return ServerConfig(
            id=row["id"],
            name=row["name"],
            transport=row["transport"],
            url=row["url"],
            command=row["command"],
            args=list(row["args"]),
            env={k: self._box.decrypt(v) for k, v in row["env"].items()},
            cwd=row["cwd"],
            headers={k: self._box.decrypt(v) for k, v in row["headers"].items()},
            bearer_token=None if token is None else self._box.decrypt(token),
            is_active=row["is_active"],
        )
