"""Server-Sent Events: encoding for the streams we send, decoding for the ones we read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    data: str
    event: str = "message"
    id: str | None = None


def encode_event(data: str, event: str | None = None, id: str | None = None) -> bytes:
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def comment(text: str = "keep-alive") -> bytes:
    """A comment line: clients ignore it, proxies see traffic on an idle stream."""
    return f": {text}\n\n".encode()


def iter_events(lines: Iterable[bytes | str]) -> Iterator[SseEvent]:
    """Decode an event stream given line by line (e.g. requests' iter_lines())."""
    data: list[str] = []
    event = "message"
    event_id: str | None = None
    for raw in lines:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r")
        if not line:
            if data:
                yield SseEvent("\n".join(data), event, event_id)
            data, event = [], "message"
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value or "message"
        elif name == "id":
            event_id = value
    if data:
        yield SseEvent("\n".join(data), event, event_id)
