"""API keys as admins manage them (scripts/keys.py and /api/v1/keys): create, scope, change.

A key is unscoped (it reaches everything, the admin API included) or scoped to a list of
namespaces, named by name or id; every change tells each process's Authenticator to reload.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from metamcp import crypto, repository
from metamcp.authn import TOPIC
from metamcp.errors import NotFound, ValidationFailed


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValidationFailed("The key name must be 1 to 200 characters.", {"name": ["1 to 200 characters."]})
    return name


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


def create(cur: Any, name: str, namespaces: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """A new key: its row and the plain key (shown once, stored only hashed)."""
    new = crypto.generate_api_key()
    row = repository.insert_key(cur, check_name(name), new.hash, new.prefix)
    if namespaces is not None:
        repository.set_key_scope(cur, row["id"], namespace_ids(cur, namespaces))
    repository.notify_change(cur, TOPIC)
    return existing(cur, row["id"]), new.plain


def change(cur: Any, key_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Rename, (in)activate or rescope a key; `"namespaces": None` makes it unscoped."""
    row = existing(cur, key_id)
    repository.update_key(cur, key_id, check_name(fields.get("name", row["name"])),
                          fields.get("is_active", row["is_active"]))
    if "namespaces" in fields:
        repository.set_key_scope(cur, key_id, namespace_ids(cur, fields["namespaces"]))
    repository.notify_change(cur, TOPIC)
    return existing(cur, key_id)


def existing(cur: Any, key_id: int) -> dict[str, Any]:
    row = repository.get_key(cur, key_id)
    if row is None:
        raise NotFound(f"No API key with id {key_id}.")
    return row
