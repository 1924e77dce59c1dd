"""The peer for the MCP conformance suite (official `mcp` SDK): what its server scenarios call.

    python tests/servers/conformance_server.py --port P [--host 127.0.0.1]

Offers the tools, resources, resource template, prompts and completion that the server
scenarios of `@modelcontextprotocol/conformance` 0.1.16 call (`test_simple_text`,
`test://static-text`, `test_simple_prompt`, ...), with the contents its README asks for, and
the diagnostics the 0.2.0 prerelease calls at `--spec-version 2026-07-28` (`add_revision_2026`),
over Streamable HTTP at /mcp; the SDK answers both revisions on that URL. Prints nothing on
stdout (tests poll the port).
"""

from __future__ import annotations

import argparse
import base64
import json
import warnings
from typing import Annotated, Any

import anyio
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.shared.exceptions import MCPError
from mcp.types import Completion, PromptReference
from pydantic import Field

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
    add_revision_2026(server)
    return server


# The 2026-07-28 diagnostics. An `input_required` round is one of these questions; the
# client retries the same request with `inputResponses` keyed like `inputRequests`.
def ask_form(message: str, field: str, kind: str = "string") -> types.ElicitRequest:
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema={
        "type": "object", "properties": {field: {"type": kind}}, "required": [field]}))


def ask_sampling(text: str, max_tokens: int) -> types.CreateMessageRequest:
    return types.CreateMessageRequest(params=types.CreateMessageRequestParams(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))],
        max_tokens=max_tokens))


ASK_NAME = ask_form("What is your name?", "name")
JSON_SCHEMA_2020_12 = {  # the schema the json-schema-2020-12 scenario expects back verbatim
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def missing(ctx: Context, *keys: str) -> bool:
    """The retry lacks an answer to one of `keys` (or this is the first round)."""
    answers = ctx.input_responses or {}
    return any(key not in answers for key in keys)


def input_required(requests: dict[str, types.InputRequest], state: str | None = None) -> types.InputRequiredResult:
    return types.InputRequiredResult(input_requests=requests, request_state=state)


def add_revision_2026(server: MCPServer) -> None:
    """What the 2026-07-28 server scenarios call beside the shared fixtures."""

    @server.tool(description="Needs the client's sampling capability (-32021 without it)")
    def test_missing_capability(ctx: Context) -> str:
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.sampling is None:
            data = types.MissingRequiredClientCapabilityErrorData(
                required_capabilities=types.ClientCapabilities(sampling=types.SamplingCapability()))
            raise MCPError(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
                           message="This tool needs the client's sampling capability",
                           data=data.model_dump(by_alias=True, mode="json", exclude_none=True))
        return "The client declared sampling"

    @server.tool(description="Asks the client a question mid-call (input_required on 2026-07-28)")
    async def test_streaming_elicitation(ctx: Context) -> str | types.InputRequiredResult:
        await ctx.report_progress(0, 1, message="Asking the client")
        if missing(ctx, "user_name"):
            return input_required({"user_name": ASK_NAME})
        return "Elicitation answered"

    @server.tool(description="Logs at info level; a 2026 request without a logLevel gets none")
    async def test_logging_tool(ctx: Context) -> str:
        for line in ("Logging tool started", "Logging tool finished"):
            with warnings.catch_warnings():  # logging is deprecated from 2026-07-28 on
                warnings.simplefilter("ignore")
                await ctx.info(line)
        return "Logging tool executed"

    def dynamic_tool() -> str:
        return "A tool that comes and goes"

    def dynamic_prompt() -> str:
        return "A prompt that comes and goes"

    @server.tool(description="Adds or removes test_dynamic_tool and notifies tools/list_changed")
    async def test_trigger_tool_change(ctx: Context) -> str:
        if any(tool.name == "test_dynamic_tool" for tool in await server.list_tools()):
            server.remove_tool("test_dynamic_tool")
        else:
            server.add_tool(dynamic_tool, name="test_dynamic_tool", description="Comes and goes")
        await ctx.notify_tools_changed()
        return "Tool list changed"

    @server.tool(description="Adds or removes test_dynamic_prompt and notifies prompts/list_changed")
    async def test_trigger_prompt_change(ctx: Context) -> str:
        if any(prompt.name == "test_dynamic_prompt" for prompt in await server.list_prompts()):
            server.remove_prompt("test_dynamic_prompt")
        else:
            server.prompt(name="test_dynamic_prompt", description="Comes and goes")(dynamic_prompt)
        await ctx.notify_prompts_changed()
        return "Prompt list changed"

    @server.tool(description="Tool with JSON Schema 2020-12 features")
    def json_schema_2020_12_tool(name: str = "", contactMethod: str = "",  # noqa: N803
                                 phone: str = "", email: str = "") -> str:
        return f"Contact {name} by {contactMethod or 'any means'}"

    # The scenario checks the listed schema keeps every 2020-12 keyword; a signature cannot say them.
    server._tool_manager.get_tool("json_schema_2020_12_tool").parameters = JSON_SCHEMA_2020_12

    @server.tool(description="Echoes a region the client mirrors in the Mcp-Param-Region header")
    def test_custom_headers(
            region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
        return f"Region: {region}"

    @server.tool(description="One elicitation round: asks for a name")
    def test_input_required_result_elicitation(ctx: Context) -> str | types.InputRequiredResult:
        answer = (ctx.input_responses or {}).get("user_name")
        if not isinstance(answer, types.ElicitResult) or answer.action != "accept":
            return input_required({"user_name": ASK_NAME})
        return f"Hello, {(answer.content or {}).get('name', 'stranger')}!"

    @server.tool(description="One sampling round")
    def test_input_required_result_sampling(ctx: Context) -> str | types.InputRequiredResult:
        answer = (ctx.input_responses or {}).get("capital_question")
        if not isinstance(answer, types.CreateMessageResult):
            return input_required({"capital_question": ask_sampling("What is the capital of France?", 100)})
        content = answer.content
        return f"LLM response: {content.text if isinstance(content, types.TextContent) else content}"

    @server.tool(description="One roots/list round")
    def test_input_required_result_list_roots(ctx: Context) -> str | types.InputRequiredResult:
        answer = (ctx.input_responses or {}).get("client_roots")
        if not isinstance(answer, types.ListRootsResult):
            return input_required({"client_roots": types.ListRootsRequest()})
        return "Roots: " + ", ".join(str(root.uri) for root in answer.roots)

    @server.tool(description="One round whose requestState must come back")
    def test_input_required_result_request_state(ctx: Context) -> str | types.InputRequiredResult:
        if missing(ctx, "confirm") or ctx.request_state != "awaiting-confirm":
            return input_required({"confirm": ask_form("Please confirm", "ok", "boolean")}, "awaiting-confirm")
        return "state-ok: confirmed"

    @server.tool(description="Elicitation, sampling and roots/list in one round")
    def test_input_required_result_multiple_inputs(ctx: Context) -> str | types.InputRequiredResult:
        if missing(ctx, "user_name", "greeting", "client_roots") or ctx.request_state != "awaiting-all":
            return input_required({"user_name": ASK_NAME, "greeting": ask_sampling("Generate a greeting", 50),
                                   "client_roots": types.ListRootsRequest()}, "awaiting-all")
        return "All three answers received"

    @server.tool(description="Two rounds, the state moving on between them")
    def test_input_required_result_multi_round(ctx: Context) -> str | types.InputRequiredResult:
        if ctx.request_state == "round-2" and not missing(ctx, "step2"):
            return "Both steps answered"
        if ctx.request_state == "round-1" and not missing(ctx, "step1"):
            return input_required({"step2": ask_form("Step 2: What is your favorite color?", "color")}, "round-2")
        return input_required({"step1": ask_form("Step 1: What is your name?", "name")}, "round-1")

    @server.tool(description="One round; the SDK seals requestState, a tampered one is refused")
    def test_input_required_result_tampered_state(ctx: Context) -> str | types.InputRequiredResult:
        if missing(ctx, "user_name") or ctx.request_state != "untampered":
            return input_required({"user_name": ASK_NAME}, "untampered")
        return "State intact"

    @server.tool(description="Asks only for what the client declared it can answer")
    def test_input_required_result_capabilities(ctx: Context) -> str | types.InputRequiredResult:
        declared = ctx.client_capabilities or types.ClientCapabilities()
        asked: dict[str, types.InputRequest] = {}
        if declared.elicitation is not None:
            asked["user_name"] = ASK_NAME
        if declared.sampling is not None:
            asked["greeting"] = ask_sampling("Generate a greeting", 50)
        if declared.roots is not None:
            asked["client_roots"] = types.ListRootsRequest()
        if not asked or not missing(ctx, *asked):
            return f"Asked for {', '.join(sorted(asked)) or 'nothing'}"
        return input_required(asked)

    @server.prompt(description="A prompt that asks the client for its context first")
    def test_input_required_result_prompt(ctx: Context) -> str | types.InputRequiredResult:
        answer = (ctx.input_responses or {}).get("user_context")
        if not isinstance(answer, types.ElicitResult) or answer.action != "accept":
            return input_required({"user_context": ask_form("What context should the prompt use?", "context")})
        return f"Prompt in context: {(answer.content or {}).get('context', '')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build().run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
