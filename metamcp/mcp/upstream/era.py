"""Which revisions an upstream speaks, as its answer to `server/discover` tells (pure).

The verdict follows the official SDK client's probe: only positive evidence makes an upstream
modern (a DiscoverResult listing 2026-07-28); every JSON-RPC error, a plain HTTP 4xx and an
unparseable result mean a 2025 server, except -32022 naming only revisions we do not speak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metamcp.mcp.protocol import HANDSHAKE_VERSIONS, MODERN_VERSION, UNSUPPORTED_VERSION
from metamcp.mcp.upstream.call import UpstreamError

DISCOVER = "server/discover"
#: Longest wait for an answer to server/discover (a 2025 stdio server may never answer it).
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class Era:
    """What an upstream speaks: 2026-07-28 statelessly (`modern`), 2025 sessions (`legacy`)."""

    modern: bool
    legacy: bool = True
    #: The DiscoverResult of a modern upstream (capabilities, supportedVersions, ...).
    info: dict[str, Any] = field(default_factory=dict)


LEGACY = Era(modern=False)


def verdict(name: str, reply: dict[str, Any] | None) -> Era:
    """The era of upstream `name` from its reply to server/discover (None: a plain HTTP 4xx or
    no JSON-RPC answer). UpstreamError when it speaks only revisions we do not."""
    if reply is None:
        return LEGACY
    error = reply.get("error")
    if isinstance(error, dict):
        data = error.get("data") if isinstance(error.get("data"), dict) else {}
        supported = data.get("supported") if isinstance(data, dict) else None
        if (error.get("code") == UNSUPPORTED_VERSION and isinstance(supported, list)
                and MODERN_VERSION not in supported and not set(supported) & set(HANDSHAKE_VERSIONS)):
            raise UpstreamError(f"upstream {name!r}: speaks none of our revisions ({supported})")
        return LEGACY
    result = reply.get("result")
    versions = result.get("supportedVersions") if isinstance(result, dict) else None
    if not isinstance(result, dict) or not isinstance(versions, list) or MODERN_VERSION not in versions:
        return LEGACY
    # Dual-era SDK servers list only their 2026 revisions here: whether initialize works is
    # learnt when a 2025 client's request tries it (streamable.InitializeRefused).
    return Era(modern=True, info=result)
