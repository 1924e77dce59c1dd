"""Parsing untrusted JSON: a nesting-depth limit, checked before the parser recurses.

Python's json parser and serializer recurse once per nesting level, and a gunicorn worker
thread raises RecursionError at about 977 levels (measured on /api/v1/auth/token). Every
JSON text the gateway parses (request bodies, upstream messages) is checked against
MAX_JSON_DEPTH first, so neither parsing it nor serializing what is built from it (a request
forwarded upstream adds three levels, a result sent back two) comes near that limit.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

#: Deepest nesting of arrays and objects accepted anywhere (the outermost container is level 1).
#: Far beyond real tool arguments and schemas, far below the ~977 levels where Python breaks.
MAX_JSON_DEPTH = 128

_OPENERS = (b"[", b"{")
_KEEP = b'"[]{}'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
#: `[` counts +1 and `]` -1 once read as signed bytes.
_TO_STEP = bytes.maketrans(b"[]", b"\x01\xff")
#: A \\uD800-\\uDFFF escape: half of a surrogate pair, or a lone one that UTF-8 cannot carry.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JsonTooDeep(ValueError):
    """The text nests arrays/objects deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def exceeds_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether UTF-8 JSON text nests deeper than `limit`, brackets inside strings not counted.

    Every step runs in C (count, replace, translate, split): the common body has fewer
    brackets than the limit and costs two counts; a 1 MiB body of brackets costs about 30 ms.
    UTF-8 never puts these ASCII bytes inside a multi-byte character, so bytes are safe.
    Text that is not valid JSON may be misjudged; the parser refuses it either way.
    """
    if sum(body.count(opener) for opener in _OPENERS) <= limit:
        return False
    # Escapes first, on the full text: an escaped backslash, then an escaped quote, so only
    # the quotes that open and close strings remain.
    structure = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_TO_SQUARE, _DROP)
    # Dropping two adjacent quotes keeps every bracket's inside/outside parity; what is left
    # between quotes is string content (odd pieces of the split).
    structure = structure.replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[0::2])
    if structure.count(b"[") <= limit:
        return False
    if b"[" * (limit + 1) in structure:
        return True
    return max(accumulate(array("b", structure.translate(_TO_STEP)))) > limit


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(body: bytes | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for untrusted text: JsonTooDeep when too deep; ValueError when not UTF-8
    JSON, or when it holds what cannot be stored or re-sent as JSON (NaN, Infinity, a number
    that overflows a float, a lone surrogate)."""
    data = body.encode() if isinstance(body, str) else body
    if exceeds_depth(data, limit):
        raise JsonTooDeep(limit)
    text = data.decode("utf-8-sig")  # RFC 8259: UTF-8; a byte order mark may be ignored
    try:
        # The float hook costs ~30% on a body of nothing but floats, nothing on the others.
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # the check above makes this unreachable; kept as a last guard
        raise JsonTooDeep(limit) from None
    if _SURROGATE_ESCAPE.search(data):
        # Rare: pairs (an escaped emoji) pass; a lone surrogate cannot be encoded (UnicodeError).
        json.dumps(value, ensure_ascii=False).encode()
    return value
