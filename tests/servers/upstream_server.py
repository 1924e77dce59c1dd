"""An upstream MCP server for the tests (official SDK), with the behaviours tests need.

    python tests/servers/upstream_server.py --port P --name alpha [--transport sse]
        [--json-response] [--page-size N] [--tools N] [--log-file F]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import Completion, PromptReference

NAMES = ("Ada", "Alan", "Grace", "Linus")
PAGED_METHODS = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources"}


def build(name: str, tools: int, page_size: int | None, log_file: Path | None) -> MCPServer:
    server = MCPServer(f"upstream-{name}", version="1.0.0")

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

    @server.tool(description="Always fail.")
    def fail() -> str:
        raise ToolError("this tool always fails")

    @server.tool(description="The HTTP headers this call arrived with, as JSON.")
    def headers(ctx: Context) -> str:
        return json.dumps(dict(ctx.headers or {}))

    def make(tool_name: str) -> Any:
        def generated(text: str) -> str:
            return f"{tool_name}: {text}"

        return generated

    for index in range(tools):
        server.tool(name=f"tool_{index:03d}", description=f"Generated tool {index}.")(make(f"tool_{index:03d}"))

    @server.resource(f"test://{name}/info", description="About this server.")
    def info() -> str:
        return json.dumps({"name": name, "started": time.time()})

    @server.resource("test://" + name + "/items/{item}", description="One item.")
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

    if page_size:
        async def paginate(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
            result = await call_next(ctx)
            key = PAGED_METHODS.get(ctx.method)
            if key is None or not isinstance(result, dict):
                return result
            cursor = (ctx.params or {}).get("cursor")
            start = int(cursor) if cursor else 0
            page = {**result, key: result[key][start:start + page_size]}
            if start + page_size < len(result[key]):
                page["nextCursor"] = str(start + page_size)
            return page

        server.middleware.append(paginate)
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="test")
    parser.add_argument("--transport", choices=("streamable-http", "sse"), default="streamable-http")
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--tools", type=int, default=0)
    parser.add_argument("--log-file", type=Path)
    args = parser.parse_args()
    server = build(args.name, args.tools, args.page_size or None, args.log_file)
    if args.transport == "sse":
        server.run("sse", host="127.0.0.1", port=args.port)
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port, json_response=args.json_response)


if __name__ == "__main__":
    main()
