"""The peer for the MCP conformance suite (official `mcp` SDK): what its server scenarios call.

    python tests/servers/conformance_server.py --port P [--host 127.0.0.1]

Offers the tools, resources, resource template, prompts and completion that the server
scenarios of `@modelcontextprotocol/conformance` 0.1.16 call (`test_simple_text`,
`test://static-text`, `test_simple_prompt`, ...), with the contents its README asks for, over
Streamable HTTP at /mcp. Prints nothing on stdout (tests poll the port).
"""

from __future__ import annotations

import argparse
import base64
import json
import warnings
from typing import Any

import anyio
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.shared.exceptions import MCPError
from mcp.types import Completion, PromptReference

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
STEP = 0.05  # seconds between the notifications of the logging and progress tools
ARGUMENT_VALUES = ("test-value-1", "test-value-2", "other-value")  # completions offered for arg1/arg2

# The schemas the elicitation scenarios check, as the suite's reference server sends them.
USER_INFO = {
    "type": "object",
    "properties": {"username": {"type": "string", "description": "User's response"},
                   "email": {"type": "string", "description": "User's email address"}},
    "required": ["username", "email"],
}
DEFAULTS = {  # SEP-1034: a default for every primitive type
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {"type": "string", "description": "User status",
                   "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}
ENUMS = {  # SEP-1330: the five enum forms
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "description": "Select one option",
                           "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "description": "Select one option with titles",
                         "oneOf": [{"const": "value1", "title": "First Option"},
                                   {"const": "value2", "title": "Second Option"},
                                   {"const": "value3", "title": "Third Option"}]},
        "legacyEnum": {"type": "string", "description": "Select one option (legacy)",
                       "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "description": "Select multiple options",
                          "minItems": 1, "maxItems": 3,
                          "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "description": "Select multiple options with titles",
                        "minItems": 1, "maxItems": 3,
                        "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                                            {"const": "value2", "title": "Second Choice"},
                                            {"const": "value3", "title": "Third Choice"}]}},
    },
    "required": [],
}


def image() -> types.ImageContent:
    return types.ImageContent(type="image", data=PNG, mime_type="image/png")


def embedded(uri: str, mime_type: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
        uri=uri, mime_type=mime_type, text=text))


async def elicit(ctx: Context, message: str, schema: dict[str, Any]) -> str:
    """Ask the client on this call's stream; answer what it said."""
    result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


def build() -> MCPServer:
    server = MCPServer("conformance-test-server", version="1.0.0")
    resources = {"test://static-text", "test://static-binary", "test://watched-resource"}

    @server.tool(description="Tests simple text content response")
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @server.tool(description="Tests image content response")
    def test_image_content() -> types.ImageContent:
        return image()

    @server.tool(description="Tests audio content response")
    def test_audio_content() -> types.AudioContent:
        return types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")

    @server.tool(description="Tests embedded resource content response")
    def test_embedded_resource() -> types.EmbeddedResource:
        return embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")

    @server.tool(description="Tests response with multiple content types (text, image, resource)")
    def test_multiple_content_types() -> list[types.ContentBlock]:
        return [types.TextContent(type="text", text="Multiple content types test:"), image(),
                embedded("test://mixed-content-resource", "application/json",
                         json.dumps({"test": "data", "value": 123}))]

    @server.tool(description="Tests tool that emits log messages during execution")
    async def test_tool_with_logging(ctx: Context) -> str:
        for index, line in enumerate(("Tool execution started", "Tool processing data",
                                      "Tool execution completed")):
            if index:
                await anyio.sleep(STEP)
            with warnings.catch_warnings():  # logging is deprecated only from 2026-07-28 on
                warnings.simplefilter("ignore")
                await ctx.info(line)
        return "Tool with logging executed successfully"

    @server.tool(description="Tests tool that reports progress notifications")
    async def test_tool_with_progress(ctx: Context) -> str:
        for progress in (0, 50, 100):
            if progress:
                await anyio.sleep(STEP)
            await ctx.report_progress(progress, 100, message=f"Completed step {progress} of 100")
        return "Tool with progress executed successfully"

    @server.tool(description="Tests error response handling")
    def test_error_handling() -> str:
        raise ToolError("This tool intentionally returns an error for testing")

    @server.tool(description="Tests server-initiated sampling (LLM completion request)")
    async def test_sampling(prompt: str, ctx: Context) -> str:
        message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
        with warnings.catch_warnings():  # sampling is deprecated only from 2026-07-28 on
            warnings.simplefilter("ignore")
            result = await ctx.session.create_message(
                [message], max_tokens=100, related_request_id=ctx.request_id)
        content = result.content
        text = content.text if isinstance(content, types.TextContent) else json.dumps(
            result.model_dump(mode="json", by_alias=True, exclude_none=True)["content"])
        return f"LLM response: {text}"

    @server.tool(description="Tests server-initiated elicitation (user input request)")
    async def test_elicitation(message: str, ctx: Context) -> str:
        return await elicit(ctx, message, USER_INFO)

    @server.tool(description="Tests elicitation with default values per SEP-1034")
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        return await elicit(ctx, "Please review and update the form fields with defaults", DEFAULTS)

    @server.tool(description="Tests elicitation with enum schema improvements per SEP-1330")
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        return await elicit(ctx, "Please select options from the enum fields", ENUMS)

    @server.resource("test://static-text", name="static-text", title="Static Text Resource",
                     description="A static text resource for testing", mime_type="text/plain")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", name="static-binary", title="Static Binary Resource",
                     description="A static binary resource (image) for testing", mime_type="image/png")
    def static_binary() -> bytes:
        return base64.b64decode(PNG)

    @server.resource("test://watched-resource", name="watched-resource", title="Watched Resource",
                     description="A resource clients can subscribe to", mime_type="text/plain")
    def watched_resource() -> str:
        return "Watched resource content"

    @server.resource("test://template/{id}/data", name="template", title="Resource Template",
                     description="A resource template with parameter substitution",
                     mime_type="application/json")
    def template(id: str) -> str:  # noqa: A002 - the template's variable is called `id`
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.prompt(title="Simple Test Prompt", description="A simple prompt without arguments")
    def test_simple_prompt() -> str:
        return "This is a simple prompt for testing."

    @server.prompt(title="Prompt With Arguments", description="A prompt with required arguments")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
        return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"

    @server.prompt(title="Prompt With Embedded Resource",
                   description="A prompt that includes an embedded resource")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803
        return [UserMessage(embedded(resourceUri, "text/plain", "Embedded resource content for testing.")),
                UserMessage("Please process the embedded resource above.")]

    @server.prompt(title="Prompt With Image", description="A prompt that includes image content")
    def test_prompt_with_image() -> list[UserMessage]:
        return [UserMessage(image()), UserMessage("Please analyze the image above.")]

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        if isinstance(ref, PromptReference) and ref.name == "test_prompt_with_arguments":
            values = [value for value in ARGUMENT_VALUES if value.startswith(argument.value)]
            return Completion(values=values, total=len(values), has_more=False)
        return None

    # Handshake-era methods MCPServer has no decorator for; the low-level server declares the
    # `logging` and `resources.subscribe` capabilities once they are served.
    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def subscription(ctx: ServerRequestContext[Any, Any],
                           params: types.SubscribeRequestParams | types.UnsubscribeRequestParams
                           ) -> types.EmptyResult:
        if str(params.uri) not in resources:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown resource: {params.uri}")
        return types.EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscription)
    lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, subscription)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build().run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
