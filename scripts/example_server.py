"""Example upstream MCP server (official `mcp` SDK) for exercising the gateway.

Run e.g. `python scripts/example_server.py --port 3001 --profile files --transport streamable-http`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import Completion, PromptReference

logger = logging.getLogger(__name__)

TRANSPORTS = ("streamable-http", "sse", "stdio")
PROFILES = ("default", "files")
LANGUAGES = ("python", "javascript", "typescript", "go", "rust", "java", "sql")


def build_default_server() -> MCPServer:
    """Server with simple, stateless utility tools."""
    server = MCPServer(
        "example-default", version="1.0.0", instructions="Simple echo/math/text tools."
    )

    @server.tool(description="Echo the message back unchanged.")
    def echo(message: str) -> str:
        return message

    @server.tool(description="Add two numbers.")
    def add(a: int | float, b: int | float) -> int | float:
        return a + b

    @server.tool(description="Convert text to upper case.")
    def uppercase(text: str) -> str:
        return text.upper()

    @server.tool(description="Reverse a string.")
    def reverse(text: str) -> str:
        return text[::-1]

    @server.tool(description="Current time as an ISO-8601 UTC timestamp.")
    def timestamp() -> str:
        return datetime.now(UTC).isoformat()

    return server


def resolve_in_sandbox(sandbox: Path, path: str, error: type[Exception] = ToolError) -> Path:
    """Resolve `path` inside `sandbox`, rejecting absolute paths and `..` escapes."""
    candidate = Path(path)
    if candidate.is_absolute() or path.startswith(("/", "\\")):
        raise error(f"Absolute paths are not allowed: {path!r}")
    resolved = (sandbox / candidate).resolve()
    if not resolved.is_relative_to(sandbox):
        raise error(f"Path escapes the sandbox: {path!r}")
    return resolved


def read_sandbox_file(sandbox: Path, path: str, error: type[Exception] = ToolError) -> str:
    target = resolve_in_sandbox(sandbox, path, error)
    if not target.is_file():
        raise error(f"File not found: {path!r}")
    return target.read_text(encoding="utf-8")


def build_files_server(sandbox: Path, config: dict[str, Any]) -> MCPServer:
    """Server with sandboxed file tools, resources and prompts."""
    server = MCPServer(
        "example-files", version="1.0.0", instructions=f"File tools confined to {sandbox}."
    )

    @server.tool(description="Read a UTF-8 text file from the sandbox.")
    def read_file(path: str) -> str:
        return read_sandbox_file(sandbox, path)

    @server.tool(description="Write a UTF-8 text file into the sandbox (parents are created).")
    def write_file(path: str, content: str) -> str:
        target = resolve_in_sandbox(sandbox, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"Wrote {len(content.encode('utf-8'))} bytes to {target.relative_to(sandbox)}"

    @server.tool(description="List a sandbox directory; directories end with '/'.")
    def list_files(path: str = ".") -> list[str]:
        target = resolve_in_sandbox(sandbox, path)
        if not target.is_dir():
            raise ToolError(f"Not a directory: {path!r}")
        return sorted(f"{p.name}/" if p.is_dir() else p.name for p in target.iterdir())

    @server.tool(description="Parse a JSON document and return it pretty-printed.")
    def parse_json(text: str) -> str:
        try:
            return json.dumps(json.loads(text), indent=2, sort_keys=True)
        except json.JSONDecodeError as exc:
            raise ToolError(f"Invalid JSON: {exc}") from exc

    @server.tool(description="Base64-encode UTF-8 text.")
    def base64_encode(text: str) -> str:
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    @server.tool(description="Decode base64 data to UTF-8 text.")
    def base64_decode(data: str) -> str:
        try:
            return base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ToolError(f"Invalid base64 data: {exc}") from exc

    @server.tool(description="Count words, lines and characters.")
    def word_count(text: str) -> dict[str, int]:
        return {
            "words": len(text.split()),
            "lines": len(text.splitlines()),
            "characters": len(text),
        }

    @server.tool(description="Return this server's configuration.")
    def get_config() -> dict[str, Any]:
        return config

    @server.resource("config://server", name="server-config", mime_type="application/json")
    def server_config() -> str:
        return json.dumps(config, indent=2)

    @server.resource("file://{path}", name="sandbox-file", mime_type="text/plain")
    def sandbox_file(path: str) -> str:
        return read_sandbox_file(sandbox, path, ResourceError)

    @server.prompt(description="Ask for a code review.")
    def code_review(code: str, language: str = "python") -> str:
        return f"Please review this {language} code for bugs, style and clarity:\n\n```{language}\n{code}\n```"

    @server.prompt(description="Ask for a concise summary.")
    def summarize(text: str) -> str:
        return f"Summarize the following text in a few sentences:\n\n{text}"

    @server.prompt(description="Ask for an explanation of a topic.")
    def explain(topic: str) -> str:
        return f"Explain {topic} clearly, with a short example."

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        if isinstance(ref, PromptReference) and argument.name == "language":
            values = [lang for lang in LANGUAGES if lang.startswith(argument.value)]
            return Completion(values=values, total=len(values), has_more=False)
        return None

    return server


def make_sandbox(path: str | None) -> Path:
    """Use `path` (created if missing) or a fresh temp dir seeded with a sample file."""
    if path:
        sandbox = Path(path)
        sandbox.mkdir(parents=True, exist_ok=True)
        return sandbox.resolve()
    sandbox = Path(tempfile.mkdtemp(prefix="mcp-sandbox-")).resolve()
    (sandbox / "welcome.txt").write_text(
        "Hello from the example MCP server sandbox.\n", encoding="utf-8"
    )
    return sandbox


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (HTTP transports; default: %(default)s)")
    parser.add_argument("--port", type=int, default=3001,
                        help="port to listen on (HTTP transports; default: %(default)s)")
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="default: echo/math/text tools; files: sandboxed file tools, resources "
                             "and prompts (default: %(default)s)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="streamable-http",
                        help="default: %(default)s")
    parser.add_argument(
        "--json-response", action="store_true", help="answer POSTs with JSON, not SSE"
    )
    parser.add_argument("--stateless", action="store_true", help="streamable-http without sessions")
    parser.add_argument(
        "--sandbox", default=None,
        help="files profile: sandbox dir (default: a new temp dir, removed when the server exits)"
    )
    parser.add_argument(
        "--extra-tools", type=int, default=0, metavar="N",
        help="also serve N generated tools tool_000.. (for list benchmarks)",
    )
    parser.add_argument(
        "--sleep-tool", action="store_true",
        help="also serve sleep(seconds): answers after waiting (for capacity benchmarks)",
    )
    return parser.parse_args(argv)


def add_sleep_tool(server: MCPServer) -> None:
    @server.tool(description="Wait the given seconds (at most 600), then answer.")
    async def sleep(seconds: float) -> str:
        await anyio.sleep(min(max(seconds, 0.0), 600.0))
        return f"slept {seconds} s"


def add_generated_tools(server: MCPServer, count: int) -> None:
    """Register `count` small tools, each echoing its input with its own name."""
    def make(name: str) -> Any:
        def generated(text: str) -> str:
            return f"{name}: {text}"

        return generated

    for index in range(count):
        name = f"tool_{index:03d}"
        server.tool(name=name, description=f"Generated tool number {index}.")(make(name))


def build_server(args: argparse.Namespace) -> MCPServer:
    if args.profile == "default":
        return build_default_server()
    sandbox = make_sandbox(args.sandbox)
    config = {
        "profile": args.profile,
        "transport": args.transport,
        "host": args.host,
        "port": args.port,
        "json_response": args.json_response,
        "stateless": args.stateless,
        "sandbox": str(sandbox),
    }
    server = build_files_server(sandbox, config)
    logger.info("Files sandbox: %s", sandbox)
    return server


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)  # unwinds through main's cleanup (the default action would skip it)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    own_sandbox = None
    if args.profile == "files" and not args.sandbox:
        own_sandbox = make_sandbox(None)
        args.sandbox = str(own_sandbox)
    # uvicorn handles SIGTERM itself while serving, then raises it again: this handler ends us.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve(args)
    finally:
        if own_sandbox is not None:
            shutil.rmtree(own_sandbox, ignore_errors=True)


def serve(args: argparse.Namespace) -> None:
    server = build_server(args)
    add_generated_tools(server, args.extra_tools)
    if args.sleep_tool:
        add_sleep_tool(server)
    if args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        if args.json_response or args.stateless:
            logger.warning("--json-response/--stateless only apply to streamable-http; ignored")
        logger.info("SSE endpoint: http://%s:%d/sse", args.host, args.port)
        server.run("sse", host=args.host, port=args.port)
    else:
        logger.info("Streamable HTTP endpoint: http://%s:%d/mcp", args.host, args.port)
        app = server.streamable_http_app(json_response=args.json_response, stateless_http=args.stateless,
                                         host=args.host)
        # Ctrl-C or SIGTERM ends it within a second even while a gateway holds a stream open
        # (uvicorn would otherwise wait for every connection to close).
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
