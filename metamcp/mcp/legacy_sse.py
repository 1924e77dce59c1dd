"""Legacy HTTP+SSE (MCP 2024-11-05) of endpoints: `GET /metamcp/{name}/sse` and
`POST /metamcp/{name}/message?sessionId=...`.

The GET opens the stream: first an `endpoint` event naming the URL to POST to, then every
response and notification as a `message` event, with keep-alive comments while quiet. A POST is
answered 202 at once; its request runs on a pool thread and the answer goes to the stream. The
stream lives in one worker: answers go to it through the session's mailbox (metamcp.mcp.mailbox),
so a POST taken by another worker reaches it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request

from metamcp import observe
from metamcp.config import Settings
from metamcp.errors import DatabaseUnavailable, McpHttpError, MetaMCPError
from metamcp.mcp import jsonrpc, sse
from metamcp.mcp.dispatcher import Dispatcher
from metamcp.mcp.jsonrpc import INVALID_REQUEST, Message, RpcError
from metamcp.mcp.mailbox import Mailbox
from metamcp.mcp.protocol import (
    JSON_TYPE,
    LEGACY_VERSION,
    SSE_HEADERS,
    SSE_TYPE,
    SUPPORTED_VERSIONS,
)
from metamcp.mcp.sessions import Session
from metamcp.mcp.streamed import Streamed
from metamcp.mcp.streams import StreamBody, Streams
from metamcp.mcp.transport import admit_call, authorize, mcp_error, owned_session
from metamcp.namespaces import NamespaceView
from metamcp.request_body import read_body

logger = logging.getLogger(__name__)

bp = Blueprint("legacy_sse", __name__)
bp.register_error_handler(MetaMCPError, mcp_error)

class SseHub:
    """Answers to this process's legacy SSE requests, sent to their streams through the mailbox."""

    def __init__(self, mailbox: Mailbox, dispatcher: Dispatcher, settings: Settings,
                 observers: observe.Observers) -> None:
        self._mailbox = mailbox
        self._dispatcher = dispatcher
        self._observers = observers
        self._work = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="metamcp-sse")

    def deliver(self, session_id: str, message: dict[str, Any]) -> None:
        self._mailbox.deliver(session_id, message)

    def submit(self, session: Session, message: Message, view: NamespaceView | None,
               release: Callable[[], None] | None = None) -> None:
        """Answer on a pool thread; `release` (a tool call's admission) runs when it is done.
        The POST's record (metamcp.observe) is handed over: its operations are recorded there,
        and it reaches the sinks once the answer is delivered."""
        observation = observe.current()
        if observation is not None:
            observation.hold()
        self._work.submit(self._answer, session, message, view, release, observation)

    def _answer(self, session: Session, message: Message, view: NamespaceView | None,
                release: Callable[[], None] | None = None,
                observation: observe.Observation | None = None) -> None:
        observe.begin(observation)
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
            observe.begin(None)
            if observation is not None:
                self._observers.finish(observation)

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
    mailbox: Mailbox = services.mailbox
    messages = mailbox.open(session.id)
    post_url = f"/metamcp/{quote(endpoint)}/message?sessionId={session.id}"
    if access.by_query:  # a client that can only put the key in the URL needs it on POSTs too
        post_url += f"&api_key={quote(request.args.get('api_key', ''))}"

    def collect() -> bool:
        mailbox.collect(session.id)  # in case a NOTIFY was missed
        # An open stream keeps its session alive; one purged (or deleted) ends the stream.
        return services.sessions.get(session.id) is not None

    events = streams.standing(sse.encode_event(post_url, event="endpoint"), messages,
                              request.environ.get("gunicorn.socket"), collect)

    def cleanup() -> None:
        mailbox.close(session.id, messages)
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
