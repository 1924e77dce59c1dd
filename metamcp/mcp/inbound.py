"""The 2026-07-28 validation ladder of a POST, without a web framework: which era a request
speaks, and the first rule a modern request breaks (`_meta`, headers, version, method, and a
tools/call's Mcp-Param-* headers against the tool's schema).

The order follows the official SDK's server (its conformance checks assert which rule answers
when several are broken): `_meta` carries the version and capabilities (-32602), the
MCP-Protocol-Version / Mcp-Method / Mcp-Name headers agree with the body (-32020), the version
is one we speak (-32022), then the method exists in the revision (404, -32601). Each refusal
carries its HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from metamcp.mcp import headers as mirrored
from metamcp.mcp.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR
from metamcp.mcp.protocol import (
    HEADER_MISMATCH,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_VERSION,
    METHOD_HEADER,
    MISSING_CLIENT_CAPABILITY,
    MODERN_VERSIONS,
    NAME_HEADER,
    PARAM_HEADER_PREFIX,
    SESSION_HEADER,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_VERSION,
    VERSION_HEADER,
)
from metamcp.mcp.sessions import LOG_LEVELS

DISCOVER = "server/discover"
LISTEN = "subscriptions/listen"
#: The requests a 2026-07-28 client may send.
METHODS = frozenset({
    DISCOVER, LISTEN, "tools/list", "tools/call", "prompts/list", "prompts/get", "resources/list",
    "resources/templates/list", "resources/read", "completion/complete",
})
#: Requests of the session revisions that 2026-07-28 removed (answered as unknown, 404).
REMOVED = frozenset({"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
#: Session revisions (and the HTTP+SSE one) whose header keeps a request on the 2025 path.
_SESSION_ERA = frozenset(SUPPORTED_VERSIONS) | {"2024-11-05"}


#: The HTTP status of a modern request's error answer, by JSON-RPC code (others: 200).
ERROR_STATUS = {PARSE_ERROR: 400, INVALID_REQUEST: 400, INVALID_PARAMS: 400, HEADER_MISMATCH: 400,
                MISSING_CLIENT_CAPABILITY: 400, UNSUPPORTED_VERSION: 400, METHOD_NOT_FOUND: 404}


class Headers(Protocol):
    """A request's headers, looked up by name without regard to case (Werkzeug's Headers)."""

    def get(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class Modern:
    """A 2026-07-28 request that passed the ladder: what its `_meta` says of its client."""

    version: str
    capabilities: Any
    client_info: Any
    log_level: str | None


@dataclass(frozen=True)
class Refusal:
    """The first rule a modern request broke: HTTP status and JSON-RPC error."""

    status: int
    code: int
    message: str
    data: Any = None


def is_modern(headers: Headers, body: Any) -> bool:
    """Whether a POST is served as 2026-07-28: no session, and either a version header that no
    session revision names (so an unknown one is told it is unsupported, as the SDK does), a
    `_meta` protocol version, or `server/discover`. Anything else stays on the 2025 path."""
    if headers.get(SESSION_HEADER):
        return False
    version = headers.get(VERSION_HEADER)
    if version is not None:
        return version not in _SESSION_ERA
    if not isinstance(body, dict):
        return False
    if body.get("method") == DISCOVER:
        return True
    params = body.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and META_VERSION in meta


def unsupported(requested: str) -> Refusal | None:
    """-32022 naming the revisions we speak, unless `requested` is one."""
    if requested in MODERN_VERSIONS:
        return None
    return Refusal(400, UNSUPPORTED_VERSION, f"Unsupported protocol version: {requested}",
                   {"supported": list(MODERN_VERSIONS), "requested": requested})


def classify(body: dict[str, Any], headers: Headers) -> Modern | Refusal:
    """The ladder of a modern request (a JSON-RPC request object with an id); `headers` as the
    request sent them (case-insensitive `get`)."""
    params = body.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return Refusal(400, INVALID_PARAMS, f"Invalid params: _meta must be an object carrying "
                                            f"{META_VERSION} and {META_CAPABILITIES}")
    missing = [key for key in (META_VERSION, META_CAPABILITIES) if key not in meta]
    if missing:
        return Refusal(400, INVALID_PARAMS, f"Invalid params: _meta lacks {', '.join(missing)}")
    assert isinstance(params, dict)
    version = meta[META_VERSION]
    header = headers.get(VERSION_HEADER)
    if header is None or header != version:
        return Refusal(400, HEADER_MISMATCH, f"Header mismatch: {VERSION_HEADER} does not match the "
                                             "request's _meta protocol version")
    method = body.get("method")
    if headers.get(METHOD_HEADER) != method:
        return Refusal(400, HEADER_MISMATCH, f"Header mismatch: {METHOD_HEADER} does not match the method")
    named = mirrored.NAMED.get(method) if isinstance(method, str) else None
    if (named is not None and params.get(named) is not None
            and mirrored.decode(headers.get(NAME_HEADER)) != params[named]):
        return Refusal(400, HEADER_MISMATCH, f"Header mismatch: {NAME_HEADER} does not match params.{named}")
    if not isinstance(version, str):
        return Refusal(400, INVALID_PARAMS, "Invalid params: the _meta protocol version must be a string")
    refused = unsupported(version)
    if refused is not None:
        return refused
    level = meta.get(META_LOG_LEVEL)
    if level is not None and level not in LOG_LEVELS:
        return Refusal(400, INVALID_PARAMS, f"Invalid params: {META_LOG_LEVEL} must be one of {', '.join(LOG_LEVELS)}")
    if method not in METHODS:
        removed = " (removed in 2026-07-28)" if method in REMOVED else ""
        return Refusal(404, METHOD_NOT_FOUND, f"Method not found: {method}{removed}")
    return Modern(version, meta[META_CAPABILITIES], meta.get(META_CLIENT_INFO), level)


def param_refusal(input_schema: Any, arguments: dict[str, Any], headers: Headers) -> Refusal | None:
    """-32020 when a tools/call's Mcp-Param-* headers disagree with its arguments (the tool's
    `x-mcp-header` properties): a header without its argument, an argument without its header,
    a malformed base64 wrapper or another value."""
    for path, token in (_header_map(input_schema) or {}).items():
        name = f"{PARAM_HEADER_PREFIX}{token}"
        value = mirrored.value_at(arguments, path)
        header = headers.get(name)
        if mirrored.rendered(value) is None:
            if header is not None:
                return Refusal(400, HEADER_MISMATCH, f"Header mismatch: {name} without its argument")
            continue
        if header is None:
            return Refusal(400, HEADER_MISMATCH, f"Header mismatch: {name} missing for argument {'.'.join(path)}")
        decoded = mirrored.decode(header)
        if decoded is None or not mirrored.agrees(_property_type(input_schema, path), value, decoded):
            return Refusal(400, HEADER_MISMATCH, f"Header mismatch: {name} does not match argument {'.'.join(path)}")
    return None


#: Header maps of the tool schemas seen, by the schema object (it is kept, so its id stays
#: its own): a warm call does not walk its tool's schema again. Bounded; cleared when full.
_MAPS: dict[int, tuple[Any, mirrored.HeaderMap | None]] = {}
_MAPS_MAX = 4096


def _header_map(input_schema: Any) -> mirrored.HeaderMap | None:
    entry = _MAPS.get(id(input_schema))
    if entry is not None and entry[0] is input_schema:
        return entry[1]
    found = mirrored.header_map(input_schema)
    if len(_MAPS) >= _MAPS_MAX:
        _MAPS.clear()
    _MAPS[id(input_schema)] = (input_schema, found)
    return found


def _property_type(schema: Any, path: tuple[str, ...]) -> Any:
    """The declared type of the property at `path` of an inputSchema."""
    for key in path:
        properties = schema.get("properties") if isinstance(schema, dict) else None
        schema = properties.get(key) if isinstance(properties, dict) else None
    return schema.get("type") if isinstance(schema, dict) else None
