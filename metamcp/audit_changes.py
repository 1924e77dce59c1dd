"""Admin changes in the audit log: who changed which key, server, namespace or endpoint, and
how it was before and after, every secret replaced by "***".

Recorded in the transaction of the change (so a change that rolls back leaves no record and a
committed one always has its record). Inside a request the actor is the request's key
(metamcp.observe); outside one it is what the Database says (`cli` for the admin scripts,
`system` otherwise), and nothing is recorded when METAMCP_AUDIT is off (Database.audit_actor
None).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from metamcp import audit_repository, observe

#: What a masked secret reads as.
MASK = "***"
#: Fields whose value is a secret wherever they appear.
SECRET_FIELDS = frozenset({"bearer_token", "key", "key_hash", "api_key", "password", "token",
                           "access_token", "secret", "authorization"})
#: Fields holding a mapping whose every value is a secret (an upstream's headers and env).
SECRET_MAPS = frozenset({"headers", "env"})

_HOST = socket.gethostname()


def mask(value: Any) -> Any:
    """`value` as JSON (ids, times as text) with every secret field's value replaced by MASK."""
    return _masked(json.loads(json.dumps(value, default=str)))


def _masked(value: Any) -> Any:
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if not isinstance(value, dict):
        return value
    shown: dict[str, Any] = {}
    for name, item in value.items():
        lowered = name.lower()
        if lowered in SECRET_FIELDS:
            shown[name] = None if item is None else MASK
        elif lowered in SECRET_MAPS and isinstance(item, dict):
            shown[name] = {k: MASK for k in item}
        else:
            shown[name] = _masked(item)
    return shown


def record(cur: Any, action: str, target: Any, before: Mapping[str, Any] | None = None,
           after: Mapping[str, Any] | None = None, server: str | None = None) -> None:
    """Record an admin change (`action`: `<entity>.<verb>`, e.g. server.update) of the object
    `target` (its id) in the transaction of `cur`."""
    actor = getattr(cur, "audit_actor", "system")
    if actor is None:
        return
    observation = observe.current()
    key_id = key_name = request_id = None
    if observation is not None:
        request_id = observation.request_id
        if observation.key_id is not None:
            actor, key_id, key_name = "key", observation.key_id, observation.key_name
    audit_repository.insert_change(
        cur, actor, key_id, key_name, request_id, action, None if target is None else str(target), server,
        None if before is None else mask(before), None if after is None else mask(after), _HOST, os.getpid())
