"""The JSON nesting-depth limit and the untrusted-JSON loader (pure logic)."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import pytest

from metamcp.json_depth import MAX_JSON_DEPTH, JsonTooDeep, exceeds_depth, loads
from metamcp.mcp import jsonrpc


def nested(depth: int, inner: Any = 1) -> Any:
    value = inner
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def test_exactly_the_limit_passes_and_one_more_level_fails() -> None:
    assert loads(json.dumps(nested(MAX_JSON_DEPTH))) == nested(MAX_JSON_DEPTH)
    with pytest.raises(JsonTooDeep) as raised:
        loads(json.dumps(nested(MAX_JSON_DEPTH + 1)))
    assert str(raised.value) == f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    with pytest.raises(JsonTooDeep):
        loads(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(JsonTooDeep):  # unclosed: deep before it is invalid
        loads(b'{"a":' * 100_000)


def test_brackets_inside_strings_do_not_count() -> None:
    tricky = ['[[[{{{', '\\"[[[', '\\\\', '"]]]', '\\\\"', "\u00e9[\u20ac{"]
    body = json.dumps([{"s": "".join(random.Random(i).choices(tricky, k=40))} for i in range(50)])
    assert exceeds_depth(body.encode(), 2) is False
    assert exceeds_depth(body.encode(), 1) is True
    assert loads(body)[0]["s"]


def test_exceeds_depth_agrees_with_the_parsed_structure() -> None:
    rng = random.Random(9)
    pieces = ["[", "]", "{", "}", '"', "\\", "x", "\\\\", '\\"', "\u00e9"]

    def text() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))

    def build(level: int) -> Any:
        roll = rng.random()
        if level > 12 or roll < 0.3:
            return rng.choice([1, 2.5, None, True, text()])
        if roll < 0.65:
            return [build(level + 1) for _ in range(rng.randint(0, 3))]
        return {text(): build(level + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(3000):
        value = build(0)
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        depth = depth_of(value)
        for limit in {0, 1, max(depth - 1, 0), depth, depth + 1}:
            assert exceeds_depth(body, limit) is (depth > limit), (body, limit)


def test_values_that_cannot_be_stored_or_re_sent_are_refused() -> None:
    for body in (b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e999999", b"[-1e400]", b'"\\ud800"',
                 b'{"\\udc00": 1}', b"\xff", b"\xed\xa0\x80", b'"\x00'):
        with pytest.raises(ValueError):
            loads(body)
    assert loads(b'"\\ud83d\\ude00"') == "\U0001F600"  # a surrogate pair is a character
    assert loads(b"[1e308, 1e-400]") == [1e308, 0.0]
    assert loads("\ufeff[1]".encode()) == [1]
    assert loads('{"a": "\u20ac"}') == {"a": "\u20ac"}


def test_parse_body_answers_parse_error_naming_the_limit() -> None:
    with pytest.raises(jsonrpc.RpcError) as raised:
        jsonrpc.parse_body(b"[" * 5000 + b"]" * 5000)
    assert raised.value.code == jsonrpc.PARSE_ERROR
    assert str(MAX_JSON_DEPTH) in raised.value.message


def test_limit_leaves_room_in_a_worker_thread() -> None:
    """Parsing at the limit and serializing it inside a JSON-RPC envelope works in a thread
    whose stack is already 600 frames deep: the margin against RecursionError is wide."""
    outcome: list[Any] = []

    def deep_stack(frames: int) -> None:
        if frames:
            deep_stack(frames - 1)
            return
        value = loads(json.dumps(nested(MAX_JSON_DEPTH)))
        outcome.append(json.dumps(jsonrpc.request(1, "tools/call", {"name": "t", "arguments": value})))

    thread = threading.Thread(target=deep_stack, args=(600,))
    thread.start()
    thread.join(timeout=30)
    assert outcome and outcome[0].startswith('{"jsonrpc"')


def test_common_bodies_are_not_scanned() -> None:
    """Figures, not a timed assertion: the check costs two byte counts on a common body."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "echo", "arguments": {"message": "x" * 1_000_000}}}).encode()
    started = time.perf_counter()
    assert exceeds_depth(body) is False
    common = time.perf_counter() - started
    worst = (b"[" * 128 + b"]" * 128) * 4096
    started = time.perf_counter()
    assert exceeds_depth(worst) is False
    print(f"\ndepth check: 1 MB common body {common * 1000:.2f} ms; 1 MiB of brackets "
          f"{(time.perf_counter() - started) * 1000:.1f} ms")
