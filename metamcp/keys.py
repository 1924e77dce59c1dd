"""API keys as admins manage them (scripts/keys.py and /api/v1/keys): create, scope, change.

A key is an admin key (the admin API and every MCP route; never limited) or a client key (MCP
only), which may be limited to a list of namespaces, named by name or id. A key may carry its
own request rate. Every change tells each process's Authenticator to reload.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from metamcp import audit_changes, crypto, repository
from metamcp.authn import ADMIN, CLIENT, ROLES
from metamcp.errors import NotFound, ValidationFailed
from metamcp.notify import Topic

#: Highest per-key rate (requests per minute) accepted; beyond it a limit means nothing.
MAX_RATE_LIMIT = 1_000_000


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValidationFailed("The key name must be 1 to 200 characters.", {"name": ["1 to 200 characters."]})
    return name


def check_role(role: str, namespaces: list[str] | None) -> str:
    if role not in ROLES:
        raise ValidationFailed(f"The role must be {' or '.join(ROLES)}.", {"role": [f"One of {', '.join(ROLES)}."]})
    if role == ADMIN and namespaces is not None:
        raise ValidationFailed(
            "An admin key reaches everything and cannot be limited to namespaces; "
            "limit a client key instead.", {"namespaces": ["Only client keys can be limited."]})
    return role


def check_rate_limit(rate_limit: int | None) -> int | None:
    """Requests per minute, or None for the METAMCP_RATE_LIMIT default."""
    if rate_limit is not None and not 1 <= rate_limit <= MAX_RATE_LIMIT:
        raise ValidationFailed(f"The rate limit must be 1 to {MAX_RATE_LIMIT} requests per minute, "
                               "or null for the default.", {"rate_limit": [f"1 to {MAX_RATE_LIMIT}."]})
    return rate_limit


def namespace_ids(cur: Any, names_or_ids: list[str] | None) -> list[UUID] | None:
    """The ids of these namespaces (names or ids); ValidationFailed naming any unknown."""
    if names_or_ids is None:
        return None
    found = repository.find_namespaces(cur, list(names_or_ids))
    known = {row["name"] for row in found} | {str(row["id"]) for row in found}
    unknown = [n for n in names_or_ids if n not in known]
    if unknown:
        raise ValidationFailed(f"No namespace named {', '.join(unknown)}.", {"namespaces": unknown})
    return [row["id"] for row in found]


def create(cur: Any, name: str, role: str, namespaces: list[str] | None = None,
           rate_limit: int | None = None) -> tuple[dict[str, Any], str]:
    """A new key: its row and the plain key (shown once, stored only hashed)."""
    check_role(role, namespaces)
    new = crypto.generate_api_key()
    row = repository.insert_key(cur, check_name(name), new.hash, new.prefix, role, check_rate_limit(rate_limit))
    if namespaces is not None:
        repository.set_key_access(cur, row["id"], role, namespace_ids(cur, namespaces))
    repository.notify_change(cur, Topic.KEYS)
    created = existing(cur, row["id"])
    audit_changes.record(cur, "key.create", created["id"], None, created)
    return created, new.plain


def change(cur: Any, key_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Rename, (in)activate, change the role, scope or rate of a key.

    `"namespaces": None` lifts the limit. Limiting a key to namespaces without naming a role
    makes it a client key (as it always meant); making a key admin without naming namespaces
    lifts its limit (admin keys reach everything).
    """
    row = before = existing(cur, key_id)
    current_scope = row["namespaces"] if row["scoped"] else None
    role = fields.get("role", row["role"])
    scope = fields.get("namespaces", current_scope)
    if "role" not in fields and fields.get("namespaces") is not None:
        role = CLIENT
    if fields.get("role") == ADMIN and "namespaces" not in fields:
        scope = None
    check_role(role, scope)
    repository.update_key(cur, key_id, check_name(fields.get("name", row["name"])),
                          fields.get("is_active", row["is_active"]),
                          check_rate_limit(fields.get("rate_limit", row["rate_limit"])))
    if role != row["role"] or "namespaces" in fields or scope != current_scope:
        repository.set_key_access(cur, key_id, role, namespace_ids(cur, scope))
    repository.notify_change(cur, Topic.KEYS)
    after = existing(cur, key_id)
    audit_changes.record(cur, "key.update", key_id, before, after)
    return after


def set_active(cur: Any, key_id: int, active: bool) -> dict[str, Any]:
    """(In)activate a key (its JWTs stop working while it is inactive)."""
    before = existing(cur, key_id)
    repository.set_key_active(cur, key_id, active)
    repository.notify_change(cur, Topic.KEYS)
    after = existing(cur, key_id)
    audit_changes.record(cur, "key.update", key_id, before, after)
    return after


def delete(cur: Any, key_id: int) -> dict[str, Any]:
    """Delete a key for good; returns the row it had."""
    row = existing(cur, key_id)
    repository.delete_key(cur, key_id)
    repository.notify_change(cur, Topic.KEYS)
    audit_changes.record(cur, "key.delete", key_id, row, None)
    return row


def existing(cur: Any, key_id: int) -> dict[str, Any]:
    row = repository.get_key(cur, key_id)
    if row is None:
        raise NotFound(f"No API key with id {key_id}.")
    return row
