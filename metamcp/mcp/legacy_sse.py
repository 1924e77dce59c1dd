"""Legacy HTTP+SSE (MCP 2024-11-05) of endpoints: `GET /metamcp/{name}/sse` and
`POST /metamcp/{name}/message?sessionId=...`.

The GET opens the stream: first an `endpoint` event naming the URL to POST to, then every
response and notification as a `message` event, with keep-alive comments while quiet. A POST is
answered 202 at once; its request runs on a pool thread and the answer goes to the stream. The
stream lives in one worker: a POST taken by another worker stores the answer in sse_outbox and
NOTIFYs topic "sse", and the stream's worker picks it up.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request

from metamcp import repository
from metamcp.config import Settings
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable, McpHttpError, MetaMCPError
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.dispatcher import Dispatcher
from metamcp.mcp.jsonrpc import INVALID_REQUEST, Message, RpcError
from metamcp.mcp.protocol import (
    JSON_TYPE,
    LEGACY_VERSION,
    SSE_HEADERS,
    SSE_TYPE,
    SUPPORTED_VERSIONS,
)
from metamcp.mcp.sessions import Session
from metamcp.mcp.streams import StreamBody, Streamed, Streams
from metamcp.mcp.transport import admit_call, authorize, mcp_error, owned_session
from metamcp.namespaces import NamespaceView
from metamcp.notify import Topic
from metamcp.request_body import read_body

logger = logging.getLogger(__name__)

bp = Blueprint("legacy_sse", __name__)
bp.register_error_handler(MetaMCPError, mcp_error)

class SseHub:
    """This process's legacy SSE streams, and delivery to streams held anywhere."""

    def __init__(self, db: Database, dispatcher: Dispatcher, settings: Settings) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._streams: dict[str, queue.SimpleQueue[dict[str, Any] | None]] = {}
        self._lock = threading.Lock()
        self._work = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="metamcp-sse")

    def open(self, session_id: str) -> queue.SimpleQueue[dict[str, Any] | None]:
        messages: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self._lock:
            self._streams[session_id] = messages
        return messages

    def close_stream(self, session_id: str) -> None:
        with self._lock:
            self._streams.pop(session_id, None)

    def deliver(self, session_id: str, message: dict[str, Any]) -> None:
        stream = self._streams.get(session_id)
        if stream is not None:
            stream.put(message)
            return
        with self._db.transaction() as cur:
            repository.push_outbox(cur, session_id, message)
            repository.notify_change(cur, Topic.SSE, session=session_id)

    def on_notify(self, message: dict[str, Any]) -> None:
        """Messages were stored for a stream; the listener reconnecting (no session) means maybe any."""
        session_id = message.get("session")
        targets = list(self._streams) if session_id is None else [session_id]
        for target in targets:
            if target in self._streams:
                self.collect(target)

    def collect(self, session_id: str) -> None:
        """Move messages stored for a stream of this process onto it."""
        stream = self._streams.get(session_id)
        if stream is None:
            return
        try:
            with self._db.transaction() as cur:
                for message in repository.take_outbox(cur, session_id):
                    stream.put(message)
        except DatabaseUnavailable:
            pass  # stored messages stay stored; the next collect, after the outage, takes them

    def submit(self, session: Session, message: Message, view: NamespaceView | None,
               release: Callable[[], None] | None = None) -> None:
        """Answer on a pool thread; `release` (a tool call's admission) runs when it is done."""
        self._work.submit(self._answer, session, message, view, release)

    def _answer(self, session: Session, message: Message, view: NamespaceView | None,
                release: Callable[[], None] | None = None) -> None:
        try:
            if message.method == "initialize":
                requested = message.params.get("protocolVersion")
                known = (*SUPPORTED_VERSIONS, LEGACY_VERSION)
                version = requested if requested in known else SUPPORTED_VERSIONS[0]
                self._dispatcher.declared(session, message.params.get("capabilities"))
                self.deliver(session.id, jsonrpc.result(message.id, self._dispatcher.initialize_result(version)))
                return
            outcome = self._dispatcher.handle(session, message, view)
            if isinstance(outcome, Streamed):
                try:
                    outcome.pump(lambda m: None if m is None else self.deliver(session.id, m))
                finally:
                    outcome.close()
            else:
                self.deliver(session.id, outcome)
        except DatabaseUnavailable as e:
            self._deliver_quietly(session.id, jsonrpc.error(message.id, jsonrpc.INTERNAL_ERROR, e.rpc_message))
        except Exception:  # noqa: BLE001 - boundary: the client must get an answer, not silence
            logger.exception("answering a legacy SSE request failed")
            self._deliver_quietly(session.id, jsonrpc.error(message.id, jsonrpc.INTERNAL_ERROR, "Internal error"))
        finally:
            if release is not None:
                release()

    def _deliver_quietly(self, session_id: str, message: dict[str, Any]) -> None:
        """An error answer: lost if it must go through the outbox and the database is away
        (the outage itself is logged once)."""
        try:
            self.deliver(session_id, message)
        except DatabaseUnavailable:
            logger.debug("an answer for a legacy SSE stream in another process was lost")

    def close(self) -> None:
        self._work.shutdown(wait=False, cancel_futures=True)


def _hub() -> SseHub:
    return current_app.extensions["metamcp"].sse


@bp.get("/metamcp/<endpoint>/sse")
def open_stream(endpoint: str) -> Response:
    access = authorize(endpoint)
    services = current_app.extensions["metamcp"]
    dispatcher: Dispatcher = services.dispatcher
    streams: Streams = services.streams
    release = streams.hold()  # Saturated (503) when the worker has no room for another stream
    try:
        session = services.sessions.create(access.key_id, LEGACY_VERSION, {}, access.endpoint_id)
    except Exception:
        release()
        raise
    hub = _hub()
    messages = hub.open(session.id)
    post_url = f"/metamcp/{quote(endpoint)}/message?sessionId={session.id}"
    if access.by_query:  # a client that can only put the key in the URL needs it on POSTs too
        post_url += f"&api_key={quote(request.args.get('api_key', ''))}"

    def collect() -> bool:
        hub.collect(session.id)  # in case a NOTIFY was missed
        # An open stream keeps its session alive; one purged (or deleted) ends the stream.
        return services.sessions.get(session.id) is not None

    events = streams.standing(sse.encode_event(post_url, event="endpoint"), messages,
                              request.environ.get("gunicorn.socket"), collect)

    def cleanup() -> None:
        hub.close_stream(session.id)
        release()
        try:
            dispatcher.end_session(session)
        except DatabaseUnavailable:
            logger.debug("a legacy SSE session was not deleted (database away); it expires idle")
        except Exception:  # noqa: BLE001 - e.g. the worker is exiting and its pool is closed
            logger.info("a legacy SSE session was not ended at close (the worker is exiting)")

    return Response(StreamBody(events, cleanup), mimetype=SSE_TYPE, headers=SSE_HEADERS)


@bp.post("/metamcp/<endpoint>/message")
def post_message(endpoint: str) -> Response:
    access = authorize(endpoint)
    services = current_app.extensions["metamcp"]
    session = owned_session(access, request.args.get("sessionId"),
                            "Bad Request: sessionId query parameter required")
    if request.mimetype != JSON_TYPE:
        raise McpHttpError(415, INVALID_REQUEST, f"Unsupported Media Type: send {JSON_TYPE}")
    body = read_body()  # 413 past the limit, 400 for broken framing
    try:
        parsed = jsonrpc.parse_body(body)
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items:
            raise RpcError(INVALID_REQUEST, "Invalid Request: empty batch")
        messages = [jsonrpc.validate(item) for item in items]
    except RpcError as e:
        raise McpHttpError(400, e.code, e.message) from None
    # Admission first, for every call of the POST, so a refusal is this POST's answer.
    releases: list[Callable[[], None] | None] = []
    try:
        for message in messages:
            calls = message.is_request and message.method == "tools/call"
            releases.append(admit_call(access, message) if calls else None)
    except McpHttpError:
        for taken in releases:
            if taken is not None:
                taken()
        raise
    for message, release in zip(messages, releases, strict=True):
        if message.is_request:
            _hub().submit(session, message, access.view, release)
        else:
            services.dispatcher.receive(session, message, access.view)
    return Response("Accepted", status=202, mimetype="text/plain")
