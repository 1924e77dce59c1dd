"""The catalog's tables (pure logic on fixed lists): names per namespace naming, each name or
URI once, the first server keeping it, and the clashes reported."""

from __future__ import annotations

import math
from uuid import uuid4

from metamcp.mcp import naming
from metamcp.mcp.tables import Clash, ServerList, namespace_items, unique_items
from metamcp.namespaces import ItemSettings, NamespaceView


def named(server: str, *names: str) -> ServerList:
    exposed = {naming.expose(server, name): name for name in names}
    return ServerList([{"name": name, "description": f"{server} {exposed[name]}"} for name in exposed],
                      exposed, math.inf)


def resources(*uris: str, key: str = "uri") -> ServerList:
    return ServerList([{key: uri, "name": uri} for uri in uris], {uri: uri for uri in uris}, math.inf)


def view(*servers: str, naming_rule: str = "prefixed",
         prompts: dict[tuple[str, str], ItemSettings] | None = None) -> NamespaceView:
    return NamespaceView(uuid4(), "team", servers, {}, prompts or {}, naming_rule)


def test_prefixed_names_never_clash_between_servers() -> None:
    servers = ["beta", "alpha"]
    items, clashes = namespace_items("tools", view(*servers), servers,
                                     [named("beta", "echo"), named("alpha", "echo")])
    assert list(items) == ["beta__echo", "alpha__echo"] and clashes == []
    assert (items["alpha__echo"].server, items["alpha__echo"].original) == ("alpha", "echo")


def test_original_names_go_to_the_server_first_in_the_namespace() -> None:
    servers = ["beta", "alpha"]  # the namespace's order, not the names'
    items, clashes = namespace_items("prompts", view(*servers, naming_rule="original"), servers,
                                     [named("beta", "greet", "add"), named("alpha", "greet", "solo")])
    assert list(items) == ["greet", "add", "solo"]
    assert items["greet"].server == "beta" and items["greet"].item["description"] == "beta greet"
    assert items["solo"].item["name"] == "solo" and items["solo"].original == "solo"
    assert clashes == [Clash("prompts", "greet", ("beta", "alpha"))]
    assert clashes[0].public() == {"kind": "prompt", "name": "greet", "servers": ["beta", "alpha"],
                                   "served_by": "beta"}


def test_overrides_and_status_apply_before_names_are_claimed() -> None:
    servers = ["beta", "alpha"]
    settings = {("beta", "greet"): ItemSettings(name="hello", title="Hello"),
                ("alpha", "solo"): ItemSettings(status="inactive"),
                ("alpha", "greet"): ItemSettings(name="add")}  # takes a name beta holds
    items, clashes = namespace_items("prompts", view(*servers, naming_rule="original", prompts=settings),
                                     servers, [named("beta", "greet", "add"), named("alpha", "greet", "solo")])
    assert list(items) == ["hello", "add"]
    assert items["hello"].original == "greet" and items["hello"].item["title"] == "Hello"
    assert items["add"].server == "beta"
    assert clashes == [Clash("prompts", "add", ("beta", "alpha"))]


def test_a_server_without_a_list_claims_nothing() -> None:
    servers = ["beta", "alpha"]
    items, clashes = namespace_items("tools", view(*servers, naming_rule="original"), servers,
                                     [None, named("alpha", "echo")])
    assert items["echo"].server == "alpha" and clashes == []


def test_each_uri_is_listed_once_for_the_first_server() -> None:
    servers = ["one", "two", "three"]
    lists = [resources("test://a", "test://b"), resources("test://b", "test://a"), resources("test://b", "test://c")]
    items, clashes = unique_items("resources", servers, lists)
    assert [item["uri"] for item in items] == ["test://a", "test://b", "test://c"]
    assert items[0] is lists[0].items[0] and items[1] is lists[0].items[1]
    assert clashes == [Clash("resources", "test://a", ("one", "two")),
                       Clash("resources", "test://b", ("one", "two", "three"))]
    assert clashes[1].public() == {"kind": "resource", "uri": "test://b", "servers": ["one", "two", "three"],
                                   "served_by": "one"}


def test_templates_are_listed_once_and_a_server_listing_a_uri_twice_is_no_clash() -> None:
    items, clashes = unique_items("resourceTemplates", ["one", "two"], [
        resources("test://{x}", "test://{x}", key="uriTemplate"), resources("test://{x}", key="uriTemplate")])
    assert items == [{"uriTemplate": "test://{x}", "name": "test://{x}"}]
    assert clashes == [Clash("resourceTemplates", "test://{x}", ("one", "two"))]
    assert clashes[0].public()["kind"] == "resourceTemplate"
    items, clashes = unique_items("resources", ["one"], [resources("test://a", "test://a")])
    assert len(items) == 1 and clashes == []
