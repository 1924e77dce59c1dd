"""Constants of the MCP wire protocol, defined once: header names, media types and revisions.

The codes JSON-RPC itself defines live beside the message helpers in metamcp.mcp.jsonrpc; the
server-error codes (-32000..-32099) MCP and this gateway use are here.
"""

from __future__ import annotations

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
#: 2026-07-28: the body's method and name (tool, prompt or resource URI) mirrored in headers.
METHOD_HEADER = "Mcp-Method"
NAME_HEADER = "Mcp-Name"
PARAM_HEADER_PREFIX = "Mcp-Param-"
#: 2026-07-28 `_meta` keys of requests, results and notifications.
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
#: What a client of Streamable HTTP accepts.
ACCEPT_BOTH = f"{JSON_TYPE}, {SSE_TYPE}"
#: Response headers of every SSE stream we serve: never cached, never buffered by a proxy.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: The stateless revision (no initialize, no session; version and capabilities in each request's
#: `_meta`, `server/discover`), served beside the session revisions on the same URLs.
MODERN_VERSION = "2026-07-28"
MODERN_VERSIONS = (MODERN_VERSION,)
#: Session revisions served on Streamable HTTP (after initialize), newest first; the only one
#: that allows JSON-RPC batches comes last.
SUPPORTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
#: Every revision a client may speak to us on Streamable HTTP (server/discover's list).
ALL_VERSIONS = MODERN_VERSIONS + SUPPORTED_VERSIONS
BATCH_VERSION = "2025-03-26"
#: The HTTP+SSE revision of legacy SSE endpoints.
LEGACY_VERSION = "2024-11-05"
#: What we ask upstreams for, and the revisions we accept back from their `initialize` (the
#: 2025 handshake; never `server/discover`).
LATEST_VERSION = SUPPORTED_VERSIONS[0]
HANDSHAKE_VERSIONS = (LEGACY_VERSION, "2025-03-26", "2025-06-18", "2025-11-25")

#: Implementation-defined server errors: -32000..-32019 (2026-07-28 reserves -32020..-32099 for
#: the codes the specification defines). The timeout as the SDK uses it.
REQUEST_TIMEOUT = -32001
#: An upstream server could not be reached or answered nonsense.
UPSTREAM_ERROR = -32010
#: Over a limit (HTTP 429 with Retry-After): the key's request rate or in-flight calls, or too
#: many failed authentications from the client's address.
TOO_MANY_REQUESTS = -32011
#: The worker has no room for another long call or stream (HTTP 503 with Retry-After), or
#: it stops and ended the call (metamcp.mcp.pool.Pool.stop).
SERVER_BUSY = -32012
#: Codes 2026-07-28 defines: headers that disagree with the body (HTTP 400), a request that
#: needs a client capability its `_meta` did not declare (HTTP 400), a revision not spoken
#: (HTTP 400, `data.supported` lists ours).
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022
