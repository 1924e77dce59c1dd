"""Server-Sent Events: encoding for the streams we send, decoding for the ones we read.

Decoding follows the WHATWG event-stream rules (fields `event`, `data`, `id`, `retry`; comment
lines ignored; an event is dispatched on a blank line), with one addition: a block that sets
only `id` or `retry` is still reported (with empty data) so a client can track where to resume.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: The longest line we buffer (an upstream that never ends a line must not exhaust memory).
MAX_LINE_BYTES = 16 * 1024 * 1024
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SseError(ValueError):
    """The stream is not a usable event stream (e.g. a line beyond MAX_LINE_BYTES)."""


@dataclass(frozen=True)
class SseEvent:
    data: str
    event: str = "message"
    #: The stream's last event id as of this event (ids persist until changed, per the spec).
    id: str | None = None
    #: Reconnection delay in milliseconds, when this block set one.
    retry: int | None = None


def encode_event(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """One event; multi-line data becomes several `data:` lines."""
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def comment(text: str = "keep-alive") -> bytes:
    """A comment line: clients ignore it, proxies see traffic on an idle stream."""
    return f": {text}\n\n".encode()


def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[str]:
    """Split raw chunks into lines ending in CRLF, LF or CR, also across chunk boundaries.

    requests' own iter_lines() yields a spurious empty line when a chunk ends between the CR
    and the LF of a CRLF (servers such as sse-starlette end lines with CRLF), which would
    dispatch half an event; use this over `iter_content()`/raw reads instead.
    """
    buffer = b""
    skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to that line end
    for chunk in chunks:
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        skip_lf = False
        buffer += chunk
        start = 0
        while True:
            cr, lf = buffer.find(b"\r", start), buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            yield buffer[start:end].decode("utf-8", errors="replace")
            start = end + 1
            if buffer[end:end + 1] == b"\r":
                if end + 1 == len(buffer):
                    skip_lf = True
                elif buffer[end + 1:end + 2] == b"\n":
                    start += 1
        buffer = buffer[start:]
        if len(buffer) > max_line:
            raise SseError(f"an event-stream line is longer than {max_line} bytes")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


def iter_events(lines: Iterable[bytes | str]) -> Iterator[SseEvent]:
    """Decode an event stream given line by line (iter_lines() above, or requests')."""
    data: list[str] = []
    event = ""
    last_id: str | None = None
    retry: int | None = None
    touched = False  # the current block set a field (comments do not count)
    for raw in lines:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            if touched:
                yield SseEvent("\n".join(data), event or "message", last_id, retry)
            data, event, retry, touched = [], "", None, False
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            if "\0" in value:
                continue  # the spec ignores such ids
            last_id = value
        elif name == "retry":
            if not value.isdigit():
                continue
            retry = int(value)
        else:
            continue  # unknown fields are ignored
        touched = True
    # End of stream: an incomplete event (no blank line after it) is discarded, per the spec.


def decode(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """Events from raw body chunks: iter_events(iter_lines(chunks))."""
    return iter_events(iter_lines(chunks))


def peer_closed(sock: socket.socket | None) -> bool:
    """Whether the client of a standing stream hung up (it sends nothing more on it, so a
    readable socket with nothing to read means closed). Without a socket: never known."""
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
