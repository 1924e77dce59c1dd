"""Reading a request body once, whole or not at all: size limit, framing errors, JSON.

Every route that reads a body goes through read_body(): the REST API (check_json_body),
/mcp, legacy SSE messages and the endpoint tool API. A chunked body is read from the server's
input stream up to the limit plus one byte, so one over the limit is refused (413) instead of
being cut; broken chunked framing, which gunicorn reports by raising from the read, is a 400.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from flask import current_app, request
from gunicorn.http.errors import NoMoreData, ParseException

from metamcp import json_depth
from metamcp.errors import BadRequest, PayloadTooLarge

logger = logging.getLogger(__name__)

#: Where the body read once is kept for the rest of the request.
_ENVIRON_KEY = "metamcp.body"


def read_body() -> bytes:
    """The request body; PayloadTooLarge past MAX_CONTENT_LENGTH, BadRequest when unreadable."""
    environ = request.environ
    cached: bytes | None = environ.get(_ENVIRON_KEY)
    if cached is not None:
        return cached
    limit: int = current_app.config["MAX_CONTENT_LENGTH"]
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is too large (limit {limit} bytes).")
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if length is None and not chunked:
        return b""
    if length is None and not environ.get("wsgi.input_terminated"):
        return b""  # a server that does not end the stream itself: reading could block forever
    try:
        # gunicorn's input ends where the body ends (Content-Length or the last chunk).
        data: bytes = environ["wsgi.input"].read(limit + 1)
    except ParseException as e:  # InvalidChunkSize, ChunkMissingTerminator, ...
        raise BadRequest(f"The request body's chunked framing is invalid ({type(e).__name__}).") from None
    except NoMoreData:
        raise BadRequest("The request body ended before its announced end.") from None
    except OSError:
        # The client went away or stalled mid-body: nobody may read this answer.
        raise BadRequest("The request body could not be read.") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"The request body is too large (limit {limit} bytes).")
    if length is not None and len(data) < length:
        raise BadRequest("The request body ended before its announced end.")
    # Later readers (webargs, get_json, get_data) get these bytes through the WSGI environ.
    environ[_ENVIRON_KEY] = data
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return data


def read_json() -> Any:
    """read_body() parsed with the depth limit; BadRequest naming what is wrong."""
    body = read_body()
    try:
        return json_depth.loads(body)
    except json_depth.JsonTooDeep as e:
        raise BadRequest(f"The request body is {e}.", {"max_depth": e.limit}) from None
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
