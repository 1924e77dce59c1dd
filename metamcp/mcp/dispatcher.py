"""MCP methods of a downstream session: the JSON-RPC dispatcher between the transport and the
router and pool (no WSGI, sockets or thread pools; a tools/call comes back as a Streamed, which
the transport sends with metamcp.mcp.streams).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from metamcp import observe
from metamcp.mcp import jsonrpc, modern
from metamcp.mcp.catalog import Catalog
from metamcp.mcp.inbound import DISCOVER, REMOVED
from metamcp.mcp.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, Message, RpcError
from metamcp.mcp.mrtr import (
    Mrtr,
    Rounds,
    input_responses,
    input_unavailable,
    needs_input,
    with_input,
)
from metamcp.mcp.pool import Pool
from metamcp.mcp.protocol import (
    ALL_VERSIONS,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_VERSION,
)
from metamcp.mcp.relay import Relay
from metamcp.mcp.request_state import Binding, Claims, invalid_state
from metamcp.mcp.router import Router
from metamcp.mcp.sessions import LOG_LEVELS, Session, SessionStore, client_capabilities, client_meta
from metamcp.mcp.streamed import Streamed
from metamcp.mcp.subscriptions import Subscriptions
from metamcp.mcp.upstream.call import PendingCall, UpstreamError
from metamcp.namespaces import NamespaceView
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "MetaMCP gateway: the tools, prompts and resources of several MCP servers behind one endpoint. "
    "Tools and prompts are named '<server>__<name>' unless the endpoint publishes the servers' own "
    "names; resources keep their URIs."
)
LIST_METHODS = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
#: The `_meta` keys of a 2026-07-28 request that speak of its client, not of the call.
ENVELOPE = frozenset({META_VERSION, META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL})
#: What a 2026-07-28 client is told the gateway offers (resources/subscribe is gone: listen).
MODERN_CAPABILITIES = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True},
    "completions": {},
    "logging": {},
}


class Dispatcher:
    """The JSON-RPC methods of a downstream session, a handler per method."""

    def __init__(self, router: Router, catalog: Catalog, pool: Pool, sessions: SessionStore,
                 publish: Callable[[Topic, dict[str, Any]], None], relay: Relay,
                 subscriptions: Subscriptions, mrtr: Mrtr) -> None:
        self._router = router
        self._mrtr = mrtr
        self._relay = relay
        self._catalog = catalog
        self._pool = pool
        self._sessions = sessions
        self._publish = publish
        self._inflight: dict[tuple[str, str], Streamed] = {}
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[Session, Message, NamespaceView | None, observe.Operation],
                                           dict[str, Any] | Streamed]] = {
            "ping": lambda _s, _m, _v, _o: {},
            "tools/call": self._call_tool,
            "prompts/get": self._get_prompt,
            "resources/read": self._read_resource,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
        }
        self._subscriptions = subscriptions

    def initialize_result(self, version: str) -> dict[str, Any]:
        return {
            "protocolVersion": version,
            "capabilities": {
                "tools": {"listChanged": True},
                "prompts": {"listChanged": True},
                "resources": {"listChanged": True, "subscribe": True},
                "completions": {},
                "logging": {},
            },
            "serverInfo": modern.server_info(),
            "instructions": INSTRUCTIONS,
        }

    def discover_result(self, public: bool) -> dict[str, Any]:
        """`server/discover`: what any request of any revision may use here; the answer only
        changes with the gateway's version, so it may be kept as long as a list."""
        return modern.complete({
            "supportedVersions": list(ALL_VERSIONS),
            "capabilities": MODERN_CAPABILITIES,
            "instructions": INSTRUCTIONS,
            "ttlMs": self._catalog.ttl_ms(),
            "cacheScope": "public" if public else "private",
        })

    def input_schema(self, name: Any, view: NamespaceView | None) -> Any:
        """The inputSchema of the tool a client calls `name` (None: no such tool here)."""
        return next((tool.get("inputSchema") for tool in self._catalog.aggregate("tools", view)
                     if tool.get("name") == name), None)

    def declared(self, session: Session, capabilities: Any) -> None:
        """A legacy SSE client's initialize: what it can be asked (its session began before)."""
        self._sessions.set_capabilities(session, client_capabilities(capabilities))

    def handle(self, session: Session, message: Message,
               view: NamespaceView | None = None) -> dict[str, Any] | Streamed:
        """Answer one request: a response dict, or a Streamed call. `view`: the namespace of
        an endpoint's session (None: every active server). The request's Operation is recorded
        (metamcp.observe): here for an answer, by the Streamed for a call."""
        op = observe.operation(message.method or "", _named(message.params))
        outcome = self._answer(session, message, view, op)
        if not isinstance(outcome, Streamed):
            op.answered(outcome)
        return outcome

    def _answer(self, session: Session, message: Message, view: NamespaceView | None,
                op: observe.Operation) -> dict[str, Any] | Streamed:
        method = message.method or ""
        try:
            if session.modern:
                return self._handle_modern(session, message, view, op)
            if method in LIST_METHODS:
                cursor = message.params.get("cursor")
                page = self._catalog.list_page(LIST_METHODS[method], cursor, view)
                return jsonrpc.result(message.id, page)
            handler = self._handlers.get(method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
            outcome = handler(session, message, view, op)
            return outcome if isinstance(outcome, Streamed) else jsonrpc.result(message.id, outcome)
        except RpcError as e:  # the gateway's, or the upstream's own answer passed on as is
            data = e.data
            uri = message.params.get("uri")
            if session.modern and method == "resources/read" and e.code == INVALID_PARAMS and data is None \
                    and isinstance(uri, str):
                data = {"uri": uri}  # 2026-07-28: a resource not found names its URI
            return jsonrpc.error(message.id, e.code, e.message, data)

    def _handle_modern(self, session: Session, message: Message, view: NamespaceView | None,
                       op: observe.Operation) -> dict[str, Any] | Streamed:
        """A 2026-07-28 request: results complete, with caching hints on lists and reads."""
        method = message.method or ""
        # Only an anonymous caller of a public endpoint sees nothing of its own in a list.
        public = session.key_id is None and session.endpoint_id is not None
        if method == DISCOVER:
            return jsonrpc.result(message.id, self.discover_result(public))
        if method in LIST_METHODS:
            page, fresh = self._catalog.served_page(LIST_METHODS[method], message.params.get("cursor"), view)
            hints = {"ttlMs": int(fresh * 1000), "cacheScope": "public" if public else "private"}
            return jsonrpc.result(message.id, modern.complete({**page, **hints}))
        handler = self._handlers.get(method)
        if handler is None or method in REMOVED:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
        outcome = handler(session, message, view, op)
        if isinstance(outcome, Streamed):
            return outcome
        if method == "resources/read":
            # An upstream's own hints pass through; without them a read is not to be kept.
            outcome = {"ttlMs": 0, "cacheScope": "private", **outcome}
        return jsonrpc.result(message.id, modern.complete(outcome))

    def receive(self, session: Session, message: Message, view: NamespaceView | None = None) -> None:
        """A notification, or a response to a relayed request, from the client."""
        if message.is_response:
            self._relay.answer(session, message.raw)
            return
        if message.method == "notifications/roots/list_changed":
            self._roots_changed(view)
            return
        if message.method != "notifications/cancelled":
            return
        request_id = message.params.get("requestId")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            return
        details = {"session": session.id, "request": request_id,
                   "reason": message.params.get("reason")}
        if not self.cancel(details):
            self._publish(Topic.CANCEL, details)  # the call may run in another worker

    def _roots_changed(self, view: NamespaceView | None) -> None:
        """Passed on to the upstreams this process speaks to that the session can reach."""
        for name in self._catalog.names(view):
            upstream = self._pool.kept(name)
            if upstream is None:
                continue
            try:
                upstream.notify("notifications/roots/list_changed")
            except UpstreamError as e:
                logger.debug("roots/list_changed not passed to %s: %s", name, e)

    def on_cancel(self, details: dict[str, Any]) -> None:
        """A cancellation published by another process."""
        self.cancel(details)

    def cancel(self, details: dict[str, Any]) -> bool:
        key = (str(details.get("session")), json.dumps(details.get("request")))
        streamed = self._inflight.get(key)
        if streamed is None:
            return False
        logger.info("cancelling a call at the client's request")
        streamed.cancel(details.get("reason"))
        return True

    def end_session(self, session: Session) -> None:
        self._sessions.delete(session.id)
        for key, streamed in list(self._inflight.items()):
            if key[0] == session.id:
                streamed.cancel("session ended")

    # --- methods -------------------------------------------------------------------------

    def _forward_params(self, message: Message, **params: Any) -> dict[str, Any]:
        """`params` with the client's `_meta` (a progress token...), less a 2026-07-28 client's
        envelope: the upstream hears the gateway's own, in the era it is spoken to."""
        meta = message.params.get("_meta")
        if isinstance(meta, dict):
            params["_meta"] = {key: value for key, value in meta.items() if key not in ENVELOPE}
        return params

    @staticmethod
    def _name_and_arguments(message: Message) -> tuple[str, dict[str, Any]]:
        name = message.params.get("name")
        arguments = message.params.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise RpcError(INVALID_PARAMS, "Invalid params: name must be a non-empty string")
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: arguments must be an object")
        return name, arguments

    def _call_tool(self, session: Session, message: Message, view: NamespaceView | None,
                   op: observe.Operation) -> Streamed:
        name, arguments = self._name_and_arguments(message)
        binding = Binding.of(session, "tools/call", name, arguments)
        claims, responses = self._retried(session, message, binding)
        key = (session.id, json.dumps(message.id))

        def forget() -> None:
            with self._lock:
                self._inflight.pop(key, None)

        if claims is not None and claims.parked is not None:  # a 2025 upstream's call, parked
            streamed = self._resume(claims, message.id, session, responses, forget)
            op.routed(claims.server, self._tool_name(name, view))
            op.upstream_started()
            streamed.operation = op
        else:
            route = self._router.route("tools", name, view)
            op.routed(route.server, route.name)
            params = self._forward_params(message, name=route.name, arguments=arguments)
            meta = client_meta(session)

            def call(answers: dict[str, Any], state: str | None) -> PendingCall:
                return self._pool.call(route.server, "tools/call", with_input(params, answers, state), client=meta)

            rounds = Rounds(self._mrtr, binding, route.server, call)
            streamed = Streamed(message.id, session, forget, route.server, self._relay, rounds)
            streamed.operation = op
            op.upstream_started()
            try:
                if claims is None:
                    streamed.attach(self._pool.call(route.server, "tools/call",
                                                    with_input(params, responses, None) if responses else params,
                                                    client=meta))
                else:
                    _same_server(claims, route.server)
                    streamed.attach(call(responses, claims.upstream_state))
            except BaseException:
                streamed.close()
                raise
        with self._lock:
            self._inflight[key] = streamed
        return streamed

    def _tool_name(self, name: str, view: NamespaceView | None) -> str:
        """The name its server knows a tool by (a resumed call's record; the tool may be gone)."""
        try:
            return self._router.route("tools", name, view).name
        except RpcError:
            return name

    def _retried(self, session: Session, message: Message, binding: Binding
                 ) -> tuple[Claims | None, dict[str, Any]]:
        """A 2026-07-28 retry's verified state (None: none given) and answers; -32602 for a
        state this gateway did not seal for this very request, or malformed answers."""
        if not session.modern:
            return None, {}
        state = message.params.get("requestState")
        # Answers without a state are the client's too (a server that gave no state gets none
        # back): they go to the server the name routes to.
        claims = None if state is None else self._mrtr.codec.open(state, binding)
        return claims, input_responses(message.params)

    def _resume(self, claims: Claims, request_id: Any, session: Session, responses: dict[str, Any],
                forget: Callable[[], None]) -> Streamed:
        """The parked call a retry names: here, or handed over to the process holding it."""
        if claims.origin == self._mrtr.origin:
            parked = self._mrtr.parking.take(str(claims.parked))
            if parked is None:
                raise invalid_state("has expired or was used already")
            assert isinstance(parked, Streamed)
            parked.resume(request_id, session, responses, forget)
            return parked
        streamed = Streamed(request_id, session, forget, claims.server, None)
        streamed.attach(self._mrtr.handover.forward(claims, responses, session))
        return streamed

    def _get_prompt(self, session: Session, message: Message, view: NamespaceView | None,
                    op: observe.Operation) -> dict[str, Any]:
        name, arguments = self._name_and_arguments(message)
        binding = Binding.of(session, "prompts/get", name, arguments)
        route = self._router.route("prompts", name, view)
        op.routed(route.server, route.name)
        params = self._forward_params(message, name=route.name, arguments=arguments)
        return self._request(session, message, binding, route.server, params, op)

    def _read_resource(self, session: Session, message: Message, view: NamespaceView | None,
                       op: observe.Operation) -> dict[str, Any]:
        uri = _uri(message)
        binding = Binding.of(session, "resources/read", uri, {})
        server = self._router.route_resource(uri, view)
        op.routed(server, uri)
        return self._request(session, message, binding, server, self._forward_params(message, uri=uri), op)

    def _request(self, session: Session, message: Message, binding: Binding, server: str,
                 params: dict[str, Any], op: observe.Operation) -> dict[str, Any]:
        """prompts/get and resources/read: a 2026-07-28 upstream's `input_required` passes to a
        2026-07-28 client with the gateway's state; a 2025 client cannot be asked (no stream)."""
        claims, responses = self._retried(session, message, binding)
        if claims is not None:
            if claims.parked is not None:
                raise invalid_state("belongs to another request")
            _same_server(claims, server)
            params = with_input(params, responses, claims.upstream_state)
        elif responses:
            params = with_input(params, responses, None)
        result = self._upstream(op, server, binding.method, params, session)
        if not needs_input(result):
            return result
        if not session.modern:
            raise input_unavailable(binding.method)
        return self._mrtr.relabel(binding, server, result)

    def _upstream(self, op: observe.Operation, server: str, method: str, params: dict[str, Any],
                  session: Session) -> dict[str, Any]:
        """A request answered at once by `server`, its time counted as the upstream's."""
        op.upstream_started()
        try:
            return self._pool.request(server, method, params, client=client_meta(session))
        finally:
            op.upstream_ended()

    def _subscribe(self, session: Session, message: Message, view: NamespaceView | None,
                   _op: observe.Operation) -> dict[str, Any]:
        return self._subscriptions.subscribe(session, _uri(message), view)

    def _unsubscribe(self, session: Session, message: Message, _view: NamespaceView | None,
                     _op: observe.Operation) -> dict[str, Any]:
        return self._subscriptions.unsubscribe(session, _uri(message))

    def _complete(self, session: Session, message: Message, view: NamespaceView | None,
                  op: observe.Operation) -> dict[str, Any]:
        ref = message.params.get("ref")
        argument = message.params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: ref and argument must be objects")
        params = {k: v for k, v in message.params.items() if k != "ref"}
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            route = self._router.route("prompts", ref["name"], view)
            server, params["ref"] = route.server, {**ref, "name": route.name}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            server = self._router.route_resource(ref["uri"], view)
            params["ref"] = ref
        else:
            raise RpcError(INVALID_PARAMS, "Invalid params: ref must be a ref/prompt or ref/resource")
        op.routed(server, params["ref"].get("name") or params["ref"]["uri"])
        return self._upstream(op, server, "completion/complete", params, session)

    def _set_level(self, session: Session, message: Message, _view: NamespaceView | None,
                   _op: observe.Operation) -> dict[str, Any]:
        level = message.params.get("level")
        if level not in LOG_LEVELS:
            raise RpcError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        self._sessions.set_log_level(session, level)
        return {}


def _same_server(claims: Claims, server: str) -> None:
    """A 2026-07-28 upstream's state goes back to the server that issued it, or nowhere."""
    if claims.server != server:
        raise invalid_state("belongs to another server")


def _named(params: dict[str, Any]) -> str | None:
    """What a request names, for its record: a tool or prompt, or a resource's URI."""
    named = params.get("name", params.get("uri"))
    return named[:500] if isinstance(named, str) else None


def _uri(message: Message) -> str:
    uri = message.params.get("uri")
    if not isinstance(uri, str) or not uri:
        raise RpcError(INVALID_PARAMS, "Invalid params: uri must be a non-empty string")
    return uri
