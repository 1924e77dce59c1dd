"""Constants of the MCP wire protocol, defined once: header names, media types and revisions.

JSON-RPC error codes live beside the message helpers in metamcp.mcp.jsonrpc.
"""

from __future__ import annotations

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
#: What a client of Streamable HTTP accepts.
ACCEPT_BOTH = f"{JSON_TYPE}, {SSE_TYPE}"
#: Response headers of every SSE stream we serve: never cached, never buffered by a proxy.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: Revisions served on Streamable HTTP, newest first; the only one that allows JSON-RPC batches
#: comes last.
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
BATCH_VERSION = "2025-03-26"
#: The HTTP+SSE revision of legacy SSE endpoints.
LEGACY_VERSION = "2024-11-05"
#: What we ask upstreams for, and the revisions we accept back from their `initialize` (the
#: 2025 handshake; never `server/discover`).
LATEST_VERSION = SUPPORTED_VERSIONS[0]
HANDSHAKE_VERSIONS = (LEGACY_VERSION, "2025-03-26", "2025-06-18", "2025-11-25")
