"""The 2026-07-28 request headers mirrored from the body: the Value Encoding of `Mcp-Name` and
`Mcp-Param-*` values (both ways), and the `x-mcp-header` annotations of a tool.

Pure functions, for both sides: the upstream client builds each modern request's headers with
them (upstream/stateless.py), the inbound ladder checks a client's against its body (inbound.py).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any

from metamcp.mcp.protocol import METHOD_HEADER, NAME_HEADER, PARAM_HEADER_PREFIX

X_MCP_HEADER = "x-mcp-header"
SENTINEL_PREFIX, SENTINEL_SUFFIX = "=?base64?", "?="
#: A header value that needs no encoding: printable ASCII (space included), no surrounding space.
_PLAIN = re.compile(r"[\x20-\x7e]*")
#: An HTTP field-name token (RFC 9110): what `x-mcp-header` may name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PRIMITIVES = ("string", "integer", "boolean")
#: Keys whose values are instance data, never schemas: an `x-mcp-header` inside is not an annotation.
_DATA_KEYS = frozenset({"default", "examples", "const", "enum"})
#: Methods whose `Mcp-Name` header mirrors params.name (else params.uri).
NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")

#: A tool's header map: the property path of each mirrored argument -> the header's name part.
HeaderMap = dict[tuple[str, ...], str]


def encode(value: str) -> str:
    """`value` as a header value: as is when plain visible ASCII without surrounding whitespace
    (and not itself looking like the sentinel), else `=?base64?<UTF-8, base64>?=`."""
    if (_PLAIN.fullmatch(value) and value == value.strip()
            and not (value.startswith(SENTINEL_PREFIX) and value.endswith(SENTINEL_SUFFIX))):
        return value
    return SENTINEL_PREFIX + base64.b64encode(value.encode()).decode("ascii") + SENTINEL_SUFFIX


def decode(value: str | None) -> str | None:
    """A header value as sent, or decoded from its base64 wrapper (None when the wrapper is
    malformed or not canonical, so it never matches a body value by accident)."""
    if value is None or not (value.startswith(SENTINEL_PREFIX) and value.endswith(SENTINEL_SUFFIX)):
        return value
    payload = value[len(SENTINEL_PREFIX):-len(SENTINEL_SUFFIX)]
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None  # not canonical: no client encodes so
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def agrees(kind: Any, value: Any, header: str) -> bool:
    """A decoded header value against the body value it mirrors: an integer property compares
    as a number (`42` and `42.0`), anything else as its rendered text."""
    if kind == "integer" and not isinstance(value, bool) and isinstance(value, int | float) \
            and _DECIMAL.fullmatch(header):
        whole, _, fraction = header.partition(".")
        return not fraction.strip("0") and int(whole) == value
    return header == rendered(value)


def header_map(input_schema: Any) -> HeaderMap | None:
    """The `x-mcp-header` annotations of a tool's inputSchema; None when one is invalid (off a
    pure `properties` chain, not a token, on a non-primitive, or a case-insensitive duplicate):
    the specification has a client leave such a tool out of its list."""
    found: HeaderMap = {}
    seen: set[str] = set()
    for path, schema in _positions(input_schema, ()):
        name = schema.get(X_MCP_HEADER)
        if name is None:
            continue
        if (not path or not isinstance(name, str) or not _TOKEN.fullmatch(name)
                or schema.get("type") not in _PRIMITIVES or name.lower() in seen):
            return None
        seen.add(name.lower())
        found[path] = name
    return found


def request_headers(method: str, params: dict[str, Any] | None,
                    mirrored: HeaderMap | None = None) -> dict[str, str]:
    """Mcp-Method, Mcp-Name (tools/call, prompts/get, resources/read) and, for a tools/call,
    an Mcp-Param-<name> per mirrored argument present in the call."""
    headers = {METHOD_HEADER: method}
    params = params or {}
    field = NAMED.get(method)
    if field is not None and isinstance(params.get(field), str):
        headers[NAME_HEADER] = encode(params[field])
    arguments = params.get("arguments")
    if mirrored and isinstance(arguments, dict):
        for path, name in mirrored.items():
            text = rendered(value_at(arguments, path))
            if text is not None:
                headers[PARAM_HEADER_PREFIX + name] = encode(text)
    return headers


def _positions(node: Any, path: tuple[str, ...] | None) -> Iterator[tuple[tuple[str, ...] | None, dict[str, Any]]]:
    """Every schema object under `node`, with its chain of `properties` keys (None once the
    chain passes through anything else: items, anyOf, $defs, ...)."""
    stack: list[tuple[tuple[str, ...] | None, Any, int]] = [(path, node, 0)]
    while stack:
        here, value, depth = stack.pop()
        if depth > 64:
            continue  # deeper than any real schema; nothing there is reachable anyway
        if isinstance(value, list):
            stack += [(None, item, depth + 1) for item in value]
            continue
        if not isinstance(value, dict):
            continue
        yield here, value
        for key, sub in value.items():
            if key == "properties" and isinstance(sub, dict):
                stack += [((*here, name) if here is not None else None, schema, depth + 1)
                          for name, schema in sub.items()]
            elif key not in _DATA_KEYS and key != X_MCP_HEADER:
                stack.append((None, sub, depth + 1))


def value_at(arguments: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The argument at a property path (None when absent)."""
    value: Any = arguments
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def rendered(value: Any) -> str | None:
    """An argument as its header carries it (strings as they are, integers in decimal, booleans
    in lower case); None for what no header carries (absent, null, objects, arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None
