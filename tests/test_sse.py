"""The event-stream codec: encoding, line splitting across chunks, event decoding."""

from __future__ import annotations

import pytest

from metamcp.mcp import sse
from metamcp.mcp.sse import SseEvent


def test_encode_event_with_name_id_and_multiline_data() -> None:
    assert sse.encode_event("a\nb", event="message", id="7") == b"event: message\nid: 7\ndata: a\ndata: b\n\n"
    assert sse.encode_event("{}") == b"data: {}\n\n"
    assert sse.encode_event("") == b"data: \n\n"


def test_comment_is_ignored_by_the_decoder() -> None:
    assert sse.comment() == b": keep-alive\n\n"
    assert list(sse.decode([sse.comment(), sse.comment("x")])) == []


@pytest.mark.parametrize("data", ["plain", "two\nlines", "", "trailing\n", "ünïcödé ✓", "a\r\nb"])
def test_round_trip(data: str) -> None:
    expected = data.replace("\r\n", "\n")
    events = list(sse.decode([sse.encode_event(data, event="message", id="1")]))
    assert events == [SseEvent(expected, "message", "1")]


def test_fields_and_defaults() -> None:
    stream = b"data: one\n\nevent: endpoint\ndata: /messages/?session_id=abc\n\nid: 5\nretry: 250\ndata:x\n\n"
    assert list(sse.decode([stream])) == [
        SseEvent("one"),
        SseEvent("/messages/?session_id=abc", "endpoint"),
        SseEvent("x", "message", "5", 250),
    ]


def test_id_persists_and_id_only_blocks_are_reported() -> None:
    stream = b"id: 1\ndata: \n\ndata: a\n\nid: 2\n\n: comment\n\n"
    events = list(sse.decode([stream]))
    assert [(e.data, e.id) for e in events] == [("", "1"), ("a", "1"), ("", "2")]


def test_odd_lines_are_ignored() -> None:
    stream = b"unknown: x\ndata\nretry: soon\nid: a\x00b\ndata: y\n\n"
    # "data" without a colon is a field with an empty value; bad retry and NUL ids are ignored.
    assert list(sse.decode([stream])) == [SseEvent("\ny")]


def test_incomplete_last_event_is_dropped() -> None:
    assert list(sse.decode([b"data: complete\n\ndata: cut off"])) == [SseEvent("complete")]


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_and_every_chunk_boundary(separator: bytes) -> None:
    """Regression: requests' iter_lines() sees an empty line when CRLF is split across chunks."""
    stream = separator.join([b"event: endpoint", b"data: /m", b"", b"data: {\"a\":1}", b"", b""])
    for size in range(1, len(stream) + 1):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert list(sse.decode(chunks)) == [SseEvent("/m", "endpoint"), SseEvent('{"a":1}')], size


def test_iter_events_takes_str_or_bytes_lines() -> None:
    lines: list[bytes | str] = ["event: x", b"data: 1", "", b"data: 2\r", b""]
    assert list(sse.iter_events(lines)) == [SseEvent("1", "x"), SseEvent("2")]


def test_multibyte_characters_split_across_chunks() -> None:
    encoded = sse.encode_event("✓✓")
    chunks = [encoded[i:i + 1] for i in range(len(encoded))]
    assert list(sse.decode(chunks)) == [SseEvent("✓✓")]


def test_an_endless_line_is_refused() -> None:
    with pytest.raises(sse.SseError):
        list(sse.iter_lines([b"data: " + b"x" * 100] * 3, max_line=200))
