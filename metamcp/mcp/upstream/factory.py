"""create_upstream: the client for a server's configured transport."""

from __future__ import annotations

import logging
from typing import Any

from metamcp.mcp.upstream.call import UpstreamError
from metamcp.mcp.upstream.interface import Upstream
from metamcp.mcp.upstream.legacy_sse import LegacySseUpstream
from metamcp.mcp.upstream.stdio import StdioUpstream
from metamcp.mcp.upstream.streamable import StreamableHttpUpstream
from metamcp.servers import ServerConfig

logger = logging.getLogger(__name__)


def create_upstream(config: ServerConfig, **kwargs: Any) -> Upstream:
    """The client for `config`'s transport (kwargs: connect_timeout, read_timeout, ...)."""
    if config.transport == "streamable_http":
        return StreamableHttpUpstream(config, **kwargs)
    if config.transport == "sse":
        return LegacySseUpstream(config, **kwargs)
    if config.transport == "stdio":
        # The address policy governs network connections, and a child process opens none.
        kwargs.pop("policy", None)
        return StdioUpstream(config, **kwargs)
    raise UpstreamError(f"upstream {config.name!r}: the {config.transport} transport is not supported")
