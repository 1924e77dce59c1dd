"""metamcp.mcp.inbound: which era a POST speaks, and the first 2026-07-28 rule it breaks."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from metamcp.mcp import inbound
from metamcp.mcp.headers import decode
from metamcp.mcp.inbound import Modern, Refusal
from metamcp.mcp.protocol import META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL, META_VERSION


class Headers(dict[str, str]):
    """Case-insensitive lookup, as Werkzeug's."""

    def get(self, key: str) -> str | None:  # type: ignore[override]
        return next((value for name, value in self.items() if name.lower() == key.lower()), None)


def body(method: str = "tools/list", **params: Any) -> dict[str, Any]:
    meta = {META_VERSION: "2026-07-28", META_CAPABILITIES: {}}
    return {"jsonrpc": "2.0", "id": 3, "method": method, "params": {"_meta": meta, **params}}


def headers(method: str = "tools/list", **extra: str) -> Headers:
    return Headers({"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, **extra})


def refused(verdict: Modern | Refusal) -> tuple[int, int]:
    assert isinstance(verdict, Refusal), verdict
    return verdict.status, verdict.code


def test_era_is_modern_without_a_session_when_the_request_says_so() -> None:
    assert inbound.is_modern(Headers({"MCP-Protocol-Version": "2026-07-28"}), {})
    assert inbound.is_modern(Headers({"MCP-Protocol-Version": "2099-01-01"}), {})  # told -32022
    assert inbound.is_modern(Headers(), body())
    assert inbound.is_modern(Headers(), {"jsonrpc": "2.0", "id": 1, "method": "server/discover"})
    assert not inbound.is_modern(Headers(), {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    assert not inbound.is_modern(Headers({"MCP-Protocol-Version": "2025-11-25"}), body())
    assert not inbound.is_modern(Headers({"Mcp-Session-Id": "s", "MCP-Protocol-Version": "2026-07-28"}), body())
    assert not inbound.is_modern(Headers(), [body()])


def test_a_good_request_passes_with_its_client() -> None:
    request = body("tools/call", name="a__b")
    request["params"]["_meta"].update({META_CLIENT_INFO: {"name": "c"}, META_LOG_LEVEL: "info",
                                       META_CAPABILITIES: {"elicitation": {}}})
    verdict = inbound.classify(request, headers("tools/call", **{"Mcp-Name": "a__b"}))
    assert verdict == Modern("2026-07-28", {"elicitation": {}}, {"name": "c"}, "info")


@pytest.mark.parametrize("params", [None, {}, {"_meta": []}, {"_meta": {META_VERSION: "2026-07-28"}},
                                    {"_meta": {META_CAPABILITIES: {}}}])
def test_meta_without_version_or_capabilities_is_invalid_params(params: Any) -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}
    assert refused(inbound.classify(request, headers())) == (400, -32602)


def test_headers_must_agree_with_the_body() -> None:
    assert refused(inbound.classify(body(), Headers({"Mcp-Method": "tools/list"}))) == (400, -32020)
    assert refused(inbound.classify(body(), headers(**{"MCP-Protocol-Version": "2025-11-25"}))) == (400, -32020)
    assert refused(inbound.classify(body(), headers("prompts/list"))) == (400, -32020)
    assert refused(inbound.classify(body(), Headers({"MCP-Protocol-Version": "2026-07-28"}))) == (400, -32020)
    call = body("tools/call", name="echo")
    assert refused(inbound.classify(call, headers("tools/call"))) == (400, -32020)
    assert refused(inbound.classify(call, headers("tools/call", **{"Mcp-Name": "other"}))) == (400, -32020)
    assert isinstance(inbound.classify(call, headers("tools/call", **{"Mcp-Name": "echo"})), Modern)
    read = body("resources/read", uri="file:///a b")
    assert refused(inbound.classify(read, headers("resources/read", **{"Mcp-Name": "file:///a"}))) == (400, -32020)


def test_mcp_name_may_come_base64_wrapped() -> None:
    name = " héllo\n"
    wrapped = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    call = body("prompts/get", name=name)
    assert isinstance(inbound.classify(call, headers("prompts/get", **{"Mcp-Name": wrapped})), Modern)
    assert decode("=?base64?not base64?=") is None
    assert decode("=?base64?aGk=?=") == "hi"
    assert decode("=?base64?aGl=?=") is None  # not canonical
    assert refused(inbound.classify(call, headers("prompts/get", **{"Mcp-Name": "=?base64?!!?="}))) == (400, -32020)


def test_an_unsupported_version_names_ours() -> None:
    request = body()
    request["params"]["_meta"][META_VERSION] = "2099-01-01"
    verdict = inbound.classify(request, headers(**{"MCP-Protocol-Version": "2099-01-01"}))
    assert refused(verdict) == (400, -32022)
    assert isinstance(verdict, Refusal)
    assert verdict.data == {"supported": ["2026-07-28"], "requested": "2099-01-01"}
    request["params"]["_meta"][META_VERSION] = 7
    assert refused(inbound.classify(request, headers(**{"MCP-Protocol-Version": "7"}))) == (400, -32020)


def test_a_header_mismatch_is_told_before_an_unsupported_version() -> None:
    request = body()
    request["params"]["_meta"][META_VERSION] = "2099-01-01"
    assert refused(inbound.classify(request, headers())) == (400, -32020)


def test_an_invalid_log_level_is_invalid_params() -> None:
    request = body()
    request["params"]["_meta"][META_LOG_LEVEL] = "loud"
    assert refused(inbound.classify(request, headers())) == (400, -32602)


@pytest.mark.parametrize("method", ["ping", "initialize", "logging/setLevel", "resources/subscribe",
                                    "resources/unsubscribe", "notifications/initialized", "nope/nope"])
def test_removed_and_unknown_methods_are_404(method: str) -> None:
    verdict = inbound.classify(body(method), headers(method))
    assert refused(verdict) == (404, -32601)
    assert isinstance(verdict, Refusal) and method in verdict.message


def test_unsupported_is_none_for_our_version() -> None:
    assert inbound.unsupported("2026-07-28") is None
    assert refused(inbound.unsupported("")) == (400, -32022)  # type: ignore[arg-type]


REGION_SCHEMA = {"type": "object", "properties": {
    "region": {"type": "string", "x-mcp-header": "Region"},
    "count": {"type": "integer", "x-mcp-header": "Count"},
    "nested": {"type": "object", "properties": {"flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
    "plain": {"type": "string"},
}}


@pytest.mark.parametrize(("arguments", "sent", "ok"), [
    ({}, {}, True),
    ({"region": "eu"}, {"Mcp-Param-Region": "eu"}, True),
    ({"region": "eu"}, {}, False),  # an argument without its header
    ({}, {"Mcp-Param-Region": "eu"}, False),  # a header without its argument
    ({"region": None}, {}, True),  # null counts as absent
    ({"region": "eu"}, {"Mcp-Param-Region": "us"}, False),
    ({"region": "Hello"}, {"Mcp-Param-Region": "=?base64?SGVsbG8=?="}, True),
    ({"region": "Hello"}, {"Mcp-Param-Region": "=?base64?SGVsbG8?="}, False),  # bad padding
    ({"region": "Hello"}, {"Mcp-Param-Region": "=?base64?SGVs!!!bG8=?="}, False),
    ({"region": "SGVsbG8="}, {"Mcp-Param-Region": "SGVsbG8="}, True),  # no wrapper: literal
    ({"count": 42}, {"Mcp-Param-Count": "42.0"}, True),
    ({"count": 42}, {"Mcp-Param-Count": "42.5"}, False),
    ({"nested": {"flag": True}}, {"Mcp-Param-Flag": "true"}, True),
    ({"nested": {"flag": True}}, {"Mcp-Param-Flag": "True"}, False),
    ({"region": ["eu"]}, {"Mcp-Param-Region": "eu"}, False),  # no header rendering for a list
    ({"plain": "x"}, {}, True),
])
def test_mcp_param_headers_agree_with_the_arguments(arguments: dict[str, Any], sent: dict[str, str],
                                                    ok: bool) -> None:
    refusal = inbound.param_refusal(REGION_SCHEMA, arguments, Headers(sent))
    assert (refusal is None) == ok, refusal
    if refusal is not None:
        assert (refusal.status, refusal.code) == (400, -32020)


def test_a_tool_without_a_schema_has_no_param_headers() -> None:
    assert inbound.param_refusal(None, {"region": "eu"}, Headers({"Mcp-Param-Region": "x"})) is None
