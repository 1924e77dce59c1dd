"""Exposed names and cursors (pure logic)."""

from __future__ import annotations

import pytest

from metamcp.mcp import naming
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError


def test_plain_names_are_server_double_underscore_tool() -> None:
    assert naming.expose("files", "read_file") == "files__read_file"
    # Split at the first "__" only: a gateway behind a gateway keeps working.
    assert naming.expose("outer", "inner__tool") == "outer__inner__tool"
    assert naming.server_candidates("outer__inner__tool", ["inner", "outer"]) == ["outer"]


def test_long_or_odd_names_are_shortened_deterministically() -> None:
    long_name = "a_really_" + "long_" * 20 + "tool"
    exposed = naming.expose("server", long_name)
    assert len(exposed) <= 64 and exposed.startswith("server__a_really_")
    assert exposed == naming.expose("server", long_name)
    assert naming.expose("server", long_name + "2") != exposed
    odd = naming.expose("server", "weird name/with:chars")
    assert naming.NAME_RE.match(odd) and odd.startswith("server__weird_name_with_chars_")
    assert odd != naming.expose("server", "weird_name_with_chars")


def test_long_server_names_still_route() -> None:
    server = "s" * 64
    exposed = naming.expose(server, "tool")
    assert len(exposed) <= 64 and naming.NAME_RE.match(exposed)
    assert naming.server_candidates(exposed, [server, "other"]) == [server]
    assert naming.server_candidates("nosuch__tool", ["files"]) == []
    assert naming.server_candidates("no-separator", ["files"]) == []


def test_cursor_round_trip_and_rejection() -> None:
    assert naming.decode_cursor(None) == 0
    assert naming.decode_cursor(naming.encode_cursor(250)) == 250
    for bad in ["", "garbage!", naming.encode_cursor(-1), 5, "x" * 200, "eyJvIjp0cnVlfQ"]:
        with pytest.raises(RpcError) as caught:
            naming.decode_cursor(bad)
        assert caught.value.code == INVALID_PARAMS
