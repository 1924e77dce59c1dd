"""Exposed names (`server__tool`) and opaque list cursors: pure functions."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError

SEPARATOR = "__"
#: Some clients drop tools whose names pass 64 characters.
MAX_NAME_LENGTH = 64
#: Characters a tool name may use (MCP 2025-11-25).
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
#: Longest server part kept in a shortened name.
_SERVER_PART = 40
_DIGEST = 8


def expose(server: str, name: str) -> str:
    """The name clients see for `name` of `server`; deterministic and within 64 characters.

    Usually `server__name`. When that is too long or `name` has characters outside
    [A-Za-z0-9_.-], the name is cleaned and cut, and a digest of the original keeps it unique:
    the gateway routes such names through its table, never by parsing them.
    """
    plain = f"{server}{SEPARATOR}{name}"
    if len(plain) <= MAX_NAME_LENGTH and NAME_RE.match(name):
        return plain
    digest = hashlib.sha256(f"{server}\0{name}".encode()).hexdigest()[:_DIGEST]
    prefix = server[:_SERVER_PART] + SEPARATOR
    room = MAX_NAME_LENGTH - len(prefix) - 1 - _DIGEST
    return f"{prefix}{_INVALID_CHARS.sub('_', name)[:room]}_{digest}"


def server_candidates(exposed: str, servers: list[str]) -> list[str]:
    """Servers an exposed name may belong to: split at the first `__` (shortened names too)."""
    head, sep, _ = exposed.partition(SEPARATOR)
    if not sep or not head:
        return []
    if head in servers:
        return [head]
    if len(head) == _SERVER_PART:
        return [s for s in servers if s.startswith(head)]
    return []


def encode_cursor(offset: int) -> str:
    raw = json.dumps({"o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object) -> int:
    """Offset of a cursor this gateway issued; -32602 for anything else."""
    if cursor is None:
        return 0
    try:
        if not isinstance(cursor, str) or len(cursor) > 100:
            raise ValueError("not a cursor")
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = data["o"]
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError("bad offset")
        return offset
    except (ValueError, KeyError, TypeError) as e:
        raise RpcError(INVALID_PARAMS, "Invalid cursor") from e
