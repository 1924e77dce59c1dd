"""Moving the stored upstream secrets from an old ENCRYPTION_KEY to the current one.

Every sealed value (bearer tokens, header values, env values) is opened with the current key
or else the old one and sealed again under the current key, all in one transaction: a value
neither key opens aborts the whole reseal, naming its server, and nothing changes. Each
changed server is recorded as an admin change and announced like any registry change, so
running gateways pick the secrets up at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metamcp import audit_changes, repository
from metamcp.crypto import CryptoError, SecretBox
from metamcp.db import Database
from metamcp.errors import MetaMCPError
from metamcp.notify import Topic

logger = logging.getLogger(__name__)


class ResealFailed(MetaMCPError):
    """A stored secret opens with neither key: nothing was changed."""

    status, code = 409, "reseal_failed"


@dataclass(frozen=True)
class Resealed:
    """What a reseal did to one server: secrets moved to the current key, and already there."""

    name: str
    moved: int
    current: int


def reseal(db: Database, old: SecretBox, new: SecretBox) -> list[Resealed]:
    """Seal every stored secret under `new` (the current key), one transaction for all."""
    report = []
    with db.transaction() as cur:
        for row in repository.list_servers(cur, lock=True):
            counts = {"moved": 0, "current": 0}

            def move(stored: str, what: str, row: Mapping[str, Any] = row,
                     counts: dict[str, int] = counts) -> str:
                try:
                    new.decrypt(stored)
                    counts["current"] += 1
                    return stored
                except CryptoError:
                    pass
                try:
                    plain = old.decrypt(stored)
                except CryptoError:
                    raise ResealFailed(
                        f"The {what} of server {row['name']!r} opens with neither the old key nor "
                        "the current ENCRYPTION_KEY; nothing was changed.") from None
                counts["moved"] += 1
                return new.encrypt(plain)

            token = row["bearer_token"]
            fields = {
                "bearer_token": None if token is None else move(token, "bearer token"),
                "headers": {k: move(v, f"header {k!r}") for k, v in row["headers"].items()},
                "env": {k: move(v, f"env value {k!r}") for k, v in row["env"].items()},
            }
            report.append(Resealed(row["name"], counts["moved"], counts["current"]))
            if counts["moved"]:
                after = repository.update_server(cur, row["id"], fields)
                repository.notify_change(cur, Topic.SERVERS, id=row["id"])
                audit_changes.record(cur, "server.reseal", row["id"], row, after, server=row["name"])
    moved = sum(entry.moved for entry in report)
    logger.info("resealed %d secret(s) of %d server(s) under the current ENCRYPTION_KEY",
                moved, sum(1 for entry in report if entry.moved))
    return report
