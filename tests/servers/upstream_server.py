"""An upstream MCP server for the tests (official `mcp` SDK), with the behaviours tests need.

    python tests/servers/upstream_server.py --port P [--name NAME]
        [--transport streamable-http|sse] [--json-response] [--page-size N] [--tools N]
        [--log-file F] [--resumable] [--uri-host HOST] [--subscriptions]
        [--legacy-only | --modern-only]

It speaks both eras, as SDK servers do: 2025 sessions (initialize) and 2026-07-28 (stateless,
`server/discover`); its tools that ask the client (ask_user, ask_model, ask_roots) use
server-initiated requests under 2025 and return `input_required` under 2026-07-28.
--legacy-only answers 2026-07-28 requests as a 2025 server does (HTTP 400, a plain JSON-RPC
error; on stdio, the handshake-only loop); --modern-only refuses `initialize` (HTTP 400, -32022).

Binds 127.0.0.1 only and prints nothing on stdout (tests poll the port). With --log-file it
appends one line per message received ("received <method> [<id or requestId>]") and per
step of the `slow` tool, so tests can see what reached the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import anyio
import uvicorn
from mcp import types
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.message import ServerMessageMetadata
from mcp.types import Completion, PromptReference
from pydantic import BaseModel, Field

MODERN = "2026-07-28"
HANDSHAKE = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
NAMES = ("Ada", "Alan", "Grace", "Linus")
PAGED = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
         "resources/templates/list": "resourceTemplates"}


class Person(BaseModel):
    name: str


def modern(ctx: Context) -> bool:
    """The request came in 2026-07-28 (no session: the client cannot be asked mid-call)."""
    return ctx.protocol_version == MODERN


def answer(ctx: Context, key: str) -> Any:
    """The client's answer to input request `key` on a 2026-07-28 retry (None: not answered yet)."""
    return (ctx.input_responses or {}).get(key)


def refusal(status: int, body: dict[str, Any]) -> Any:
    """An ASGI response of `status` with a JSON body."""
    data = json.dumps(body).encode()

    async def respond(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return respond


async def request_id(receive: Any) -> Any:
    """The id of the JSON-RPC request in an ASGI request's body (None if it has none)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get("id") if isinstance(parsed, dict) else None


def one_era(app: Any, *, legacy: bool) -> Any:
    """`app` serving one era only. Legacy: a POST claiming another revision than 2025's gets
    what a 2025 server without a session answers (HTTP 400, -32600, no modern data). Modern: a
    POST not claiming 2026-07-28 (initialize, a session's requests) gets -32022."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            version = next((v.decode("latin-1") for k, v in scope["headers"]
                            if k == b"mcp-protocol-version"), None)
            if legacy and version is not None and version not in HANDSHAKE:
                await refusal(400, {"jsonrpc": "2.0", "id": "server-error", "error": {
                    "code": -32600, "message": "Bad Request: Missing session ID"}})(scope, receive, send)
                return
            if not legacy and version != MODERN:
                await refusal(400, {"jsonrpc": "2.0", "id": await request_id(receive), "error": {
                    "code": -32022, "message": "Unsupported protocol version: this server speaks 2026-07-28 only",
                    "data": {"supported": [MODERN], "requested": version}}})(scope, receive, send)
                return
        elif scope["type"] == "http" and not legacy and scope["method"] in ("GET", "DELETE"):
            await refusal(405, {"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": "Method not allowed"}})(scope, receive, send)
            return
        await app(scope, receive, send)

    return wrapped


class MemoryEventStore(EventStore):
    """Every event kept in memory, so a client can resume a stream the server closed."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, Any]] = []  # (event id, stream id, message or None)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        ids = [event[0] for event in self._events]
        if last_event_id not in ids:
            return None
        start = ids.index(last_event_id)
        stream_id = self._events[start][1]
        for event_id, stream, message in self._events[start + 1:]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def offer_subscriptions(server: MCPServer, name: str) -> None:
    """resources/subscribe and unsubscribe, and a resource that changes: the `bump` tool raises
    it and sends notifications/resources/updated to each session subscribed to it. Also
    `notify_all_changed`: tools/list_changed to every session (as servers that broadcast do)."""
    counter_uri = f"test://{name}/counter"
    counter = {"value": 0}
    #: uri -> {session key: the session to notify}; a request's ctx.session is per request,
    #: so the client's session is told by its Mcp-Session-Id (a subscribe twice is one).
    subscribers: dict[str, dict[Any, Any]] = {}

    def key(ctx: ServerRequestContext[Any, Any]) -> Any:
        headers = getattr(ctx.request, "headers", None)
        return headers.get("mcp-session-id") if headers is not None else id(ctx.session)

    @server.resource(counter_uri, description="A counter that `bump` raises.")
    def counter_resource() -> str:
        return str(counter["value"])

    @server.tool(description="Raise the counter resource; its subscribers get resources/updated.")
    async def bump(ctx: Context) -> str:
        counter["value"] += 1
        await ctx.notify_resource_updated(counter_uri)  # 2026-07-28: subscriptions/listen streams
        for session_key, session in list(subscribers.get(counter_uri, {}).items()):
            try:
                await session.send_resource_updated(counter_uri)
            except Exception:  # noqa: BLE001 - a session that went away stops hearing
                subscribers[counter_uri].pop(session_key, None)
        return str(counter["value"])

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribers.setdefault(str(params.uri), {})[key(ctx)] = ctx.session
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any],
                          params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribers.get(str(params.uri), {}).pop(key(ctx), None)
        return types.EmptyResult()

    sessions: dict[Any, Any] = {}  # every client session seen, by key

    async def remember(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        sessions[key(ctx)] = ctx.session
        return await call_next(ctx)

    @server.tool(description="Send notifications/tools/list_changed to every client session.")
    async def notify_all_changed(ctx: Context) -> str:
        await ctx.notify_tools_changed()
        for session in list(sessions.values()):
            try:
                await session.send_tool_list_changed()
            except Exception:  # noqa: BLE001 - a session that went away
                continue
        return "sent"

    server.middleware.append(remember)
    server._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    server._lowlevel_server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams,
                                                unsubscribe)


def offer_context_tools(server: MCPServer) -> None:
    """`context` (what a request arrived with) and `regional` (an x-mcp-header argument)."""

    @server.tool(description="What this request arrived with, as JSON: its protocol version, HTTP "
                             "headers, the client's capabilities and its _meta.")
    def context(ctx: Context) -> str:
        meta = ctx.request_context.meta
        capabilities = ctx.client_capabilities
        return json.dumps({
            "protocolVersion": ctx.protocol_version, "headers": dict(ctx.headers or {}),
            "capabilities": capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
            if capabilities is not None else None,
            "meta": dict(meta) if meta is not None else None})

    @server.tool(description="Answer the region, which the client mirrors in Mcp-Param-Region.")
    def regional(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
                 ctx: Context) -> str:
        return json.dumps({"region": region, "header": (ctx.headers or {}).get("mcp-param-region")})


def build(name: str, tools: int, page_size: int, log_file: Path | None, uri_host: str | None = None,
          subscriptions: bool = False) -> MCPServer:
    server = MCPServer(f"upstream-{name}", version="1.0.0", instructions=f"Test upstream {name}.")

    def log(line: str) -> None:
        if log_file is not None:
            with log_file.open("a") as fh:
                fh.write(line + "\n")

    @server.tool(description="Echo the message back.")
    def echo(message: str) -> str:
        return f"{name}: {message}"

    @server.tool(description="Add two numbers.")
    def add(a: int | float, b: int | float) -> int | float:
        return a + b

    @server.tool(description="Sleep, then answer.")
    async def slow(seconds: float) -> str:
        log(f"slow start {seconds}")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            log("slow cancelled")
            raise
        log("slow done")
        return f"slept {seconds}"

    @server.tool(description="Report progress and log each step, then answer.")
    async def progress(steps: int, ctx: Context) -> str:
        for step in range(1, steps + 1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await ctx.info(f"step {step}")
            await ctx.report_progress(step, steps, message=f"step {step}")
            await anyio.sleep(0.02)
        return "done"

    @server.tool(description="Report progress, close the SSE stream midway (the client must "
                             "resume it with Last-Event-ID), then answer.")
    async def resumable(steps: int, ctx: Context) -> str:
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, message=f"step {step}")
            if step == steps // 2:
                await ctx.close_sse_stream()  # the next step is stored, then replayed
            elif step == steps // 2 + 1:
                await anyio.sleep(0.5)  # until the client is back: later steps go out live
        return "resumed"

    @server.tool(description="Always fail.")
    def fail() -> str:
        raise ToolError("this tool always fails")

    @server.tool(description="The HTTP headers this call arrived with, as JSON.")
    def headers(ctx: Context) -> str:
        return json.dumps(dict(ctx.headers or {}))

    @server.tool(description="Send notifications/tools/list_changed (not tied to this call).")
    async def notify_changed(ctx: Context) -> str:
        await ctx.notify_tools_changed()  # 2026-07-28: subscriptions/listen streams
        if not modern(ctx):
            await ctx.session.send_tool_list_changed()
        return "sent"

    @server.tool(description="Add a tool named `name` (it answers its name), then send "
                             "tools/list_changed.")
    async def grow(name: str, ctx: Context) -> str:
        server.add_tool(lambda: name, name=name, description="Added at run time.")
        await ctx.notify_tools_changed()
        if not modern(ctx):
            await ctx.session.send_tool_list_changed()
        return "grown"

    @server.tool(description="Ping the client on this call's stream, then answer.")
    async def ask_ping(ctx: Context) -> str:
        await ctx.session.send_request(
            types.PingRequest(), types.EmptyResult, request_read_timeout_seconds=5,
            metadata=ServerMessageMetadata(related_request_id=ctx.request_context.request_id))
        return "pong"

    @server.tool(description="Ask the user for a name (elicitation); answer what came back.")
    async def ask_user(question: str, ctx: Context) -> str | types.InputRequiredResult:
        if modern(ctx):
            reply = answer(ctx, "name")
            if not isinstance(reply, types.ElicitResult):
                return types.InputRequiredResult(input_requests={"name": types.ElicitRequest(
                    params=types.ElicitRequestFormParams(
                        message=question, requested_schema=Person.model_json_schema()))})
            if reply.action != "accept":
                return reply.action
            return f"accept: {(reply.content or {}).get('name')}"
        elicited = await ctx.elicit(question, Person)
        return f"{elicited.action}: {elicited.data.name}" if elicited.action == "accept" else elicited.action

    @server.tool(description="Ask the client's model (sampling); answer its text.")
    async def ask_model(prompt: str, ctx: Context) -> str | types.InputRequiredResult:
        messages = [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))]
        if modern(ctx):
            reply = answer(ctx, "model")
            if not isinstance(reply, types.CreateMessageResult):
                return types.InputRequiredResult(input_requests={"model": types.CreateMessageRequest(
                    params=types.CreateMessageRequestParams(messages=messages, max_tokens=32))})
            result = reply
        else:
            result = await ctx.session.create_message(messages, max_tokens=32, related_request_id=ctx.request_id)
        return result.content.text if isinstance(result.content, types.TextContent) else "no text"

    @server.tool(description="The client's roots, comma-separated (roots/list, outside the call).")
    async def ask_roots(ctx: Context) -> str | types.InputRequiredResult:
        if modern(ctx):
            reply = answer(ctx, "roots")
            if not isinstance(reply, types.ListRootsResult):
                return types.InputRequiredResult(input_requests={"roots": types.ListRootsRequest()})
            result = reply
        else:
            result = await ctx.session.list_roots()
        return ",".join(str(root.uri) for root in result.roots)

    tasks: set[asyncio.Task[None]] = set()

    @server.tool(description="Answer at once; then ask the client's roots outside any call and log them.")
    async def ask_roots_later(ctx: Context) -> str:
        session = ctx.session

        async def later() -> None:
            await anyio.sleep(0.3)
            result = await session.list_roots()
            log("roots " + ",".join(str(root.uri) for root in result.roots))

        task = asyncio.get_running_loop().create_task(later())
        tasks.add(task)  # kept until done
        task.add_done_callback(tasks.discard)
        return "asked"

    def make(tool_name: str) -> Any:
        def generated(text: str) -> str:
            return f"{tool_name}: {text}"

        return generated

    for index in range(tools):
        tool_name = f"tool_{index:03d}"
        server.tool(name=tool_name, description=f"Generated tool {index}.")(make(tool_name))

    host = uri_host or name  # several servers given one --uri-host list the same URIs

    @server.resource(f"test://{host}/info", description="About this server.")
    def info() -> str:
        return json.dumps({"name": name, "started": time.time()})

    @server.resource("test://" + host + "/items/{item}", description="One item.")
    def item(item: str) -> str:
        return f"{name} item {item}"

    @server.prompt(description="Greet someone.")
    def greet(name: str) -> str:
        return f"Please greet {name} warmly."

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        if isinstance(ref, PromptReference) and argument.name == "name":
            values = [n for n in NAMES if n.startswith(argument.value)]
            return Completion(values=values, total=len(values), has_more=False)
        return None

    async def observe(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        """Log what arrived; accept logging/setLevel (MCPServer has no handler for it)."""
        params = ctx.params or {}
        log(f"received {ctx.method} {params.get('requestId', '')}".rstrip())
        if ctx.method in ("resources/subscribe", "resources/unsubscribe"):
            log(f"{ctx.method} {params.get('uri')}")
        if ctx.method == "subscriptions/listen":  # 2026-07-28: the URIs it listens to now
            wanted = (params.get("notifications") or {}).get("resourceSubscriptions") or []
            log(f"{ctx.method} [{','.join(wanted)}]")
        if ctx.method == "logging/setLevel":
            return {}
        return await call_next(ctx)

    async def paginate(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        result = await call_next(ctx)
        key = PAGED.get(ctx.method)
        if key is None or not isinstance(result, dict):
            return result
        cursor = (ctx.params or {}).get("cursor")
        start = int(cursor) if cursor else 0
        page = {**result, key: result[key][start:start + page_size]}
        if start + page_size < len(result[key]):
            page["nextCursor"] = str(start + page_size)
        return page

    if subscriptions:
        offer_subscriptions(server, name)
    server.middleware.append(observe)
    if page_size:
        server.middleware.append(paginate)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="not used with --transport stdio")
    parser.add_argument("--name", default="test")
    parser.add_argument("--transport", choices=("streamable-http", "sse", "stdio"),
                        default="streamable-http")
    parser.add_argument("--stdio-noise", action="store_true",
                        help="stdio: print lines that are not JSON-RPC on stdout first")
    parser.add_argument("--stderr-flood", type=int, default=0, metavar="LINES",
                        help="stdio: write this many lines to stderr first")
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--tools", type=int, default=0)
    parser.add_argument("--log-file", type=Path)
    parser.add_argument("--resumable", action="store_true",
                        help="keep events so closed streams can be resumed (2025-11-25 polling)")
    parser.add_argument("--uri-host", help="the host of its resource URIs (default: --name)")
    parser.add_argument("--deep-tool", action="store_true",
                        help="also offer `deep`, whose result nests `levels` arrays deep")
    parser.add_argument("--subscriptions", action="store_true",
                        help="offer resources/subscribe, the test://NAME/counter resource and `bump`")
    parser.add_argument("--context-tools", action="store_true",
                        help="also offer `context` (what a request arrived with) and `regional` "
                             "(an argument mirrored in the Mcp-Param-Region header)")
    era = parser.add_mutually_exclusive_group()
    era.add_argument("--legacy-only", action="store_true", help="speak only the 2025 handshake revisions")
    era.add_argument("--modern-only", action="store_true",
                     help="speak only 2026-07-28 (refuse initialize; Streamable HTTP)")
    args = parser.parse_args()
    server = build(args.name, args.tools, args.page_size, args.log_file, args.uri_host, args.subscriptions)
    if args.context_tools:
        offer_context_tools(server)
    if args.deep_tool:
        def deep(levels: int) -> dict[str, Any]:
            value: Any = "bottom"
            for _ in range(levels):
                value = [value]
            return {"value": value}

        server.add_tool(deep, name="deep", description="Answer a value nested `levels` arrays deep.")
    if args.transport == "stdio":
        if args.stdio_noise:
            print("this line is not JSON-RPC", flush=True)
            print('{"neither": "is this"}', flush=True)
        for index in range(args.stderr_flood):
            print(f"stderr flood line {index} " + "x" * 200, file=sys.stderr)
        if args.legacy_only:
            anyio.run(serve_legacy_stdio, server)
        else:
            server.run("stdio")  # the client's first request decides the era
    elif args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port)
    else:
        options: dict[str, Any] = {"json_response": args.json_response}
        if args.resumable:
            options.update(event_store=MemoryEventStore(), retry_interval=100)
        app = server.streamable_http_app(**options)
        if args.legacy_only or args.modern_only:
            app = one_era(app, legacy=args.legacy_only)
        # A gateway's subscriptions/listen stream stays open: SIGTERM waits a quarter second for it.
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=0.25)


async def serve_legacy_stdio(server: MCPServer) -> None:
    """stdio in the handshake-only loop: server/discover before initialize is refused as a 2025
    SDK server refuses it."""
    lowlevel = server._lowlevel_server
    async with stdio_server() as (read_stream, write_stream), lowlevel.lifespan(lowlevel) as state:
        await serve_loop(lowlevel, read_stream, write_stream, lifespan_state=state,
                         init_options=lowlevel.create_initialization_options())


if __name__ == "__main__":
    main()
