"""Routing of exposed names (pure logic on a catalog fed fixed lists)."""

from __future__ import annotations

import math
from typing import Any
from uuid import uuid4

import pytest

from metamcp.mcp import naming
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.protocol import UPSTREAM_ERROR
from metamcp.mcp.router import Route, Router
from metamcp.mcp.tables import ServerList, Table, namespace_items
from metamcp.namespaces import ItemSettings, NamespaceView


def listed(server: str, *names: str) -> ServerList:
    exposed = {naming.expose(server, name): name for name in names}
    return ServerList([{"name": name} for name in exposed], exposed, math.inf)


class FixedCatalog:
    """What the router asks of a catalog: `cached` lists until forgotten, then what a fetch
    would return now (`upstream`, else the cached list again; None: the fetch fails)."""

    def __init__(self, cached: dict[str, ServerList],
                 upstream: dict[str, ServerList | None] | None = None) -> None:
        self.cached = dict(cached)
        self.upstream: dict[str, ServerList | None] = {**cached, **(upstream or {})}
        self.servers = sorted(self.upstream)
        self.forgotten: list[str] = []
        self.fetched: list[str] = []
        #: Active servers whose secrets the key cannot open: name -> reason.
        self.unreadable_servers: dict[str, str] = {}

    def unreadable(self, view: NamespaceView | None) -> dict[str, str]:
        return {name: reason for name, reason in self.unreadable_servers.items()
                if view is None or name in view.servers}

    def names(self, view: NamespaceView | None) -> list[str]:
        return self.servers if view is None else [s for s in view.servers if s in self.servers]

    def lists(self, kind: str, servers: list[str]) -> dict[str, ServerList]:
        found = {}
        for server in servers:
            if server not in self.cached:
                self.fetched.append(server)
                fresh = self.upstream.get(server)
                if fresh is None:
                    continue
                self.cached[server] = fresh
            found[server] = self.cached[server]
        return found

    def forget(self, kind: str, servers: list[str]) -> None:
        self.forgotten.extend(servers)
        for server in servers:
            self.cached.pop(server, None)

    def table(self, kind: str, view: NamespaceView) -> Table:
        servers = self.names(view)
        lists = self.lists(kind, servers)
        sources = [lists.get(s) for s in servers]
        routes, clashes = namespace_items(kind, view, servers, sources)
        return Table(view, servers, sources, [e.item for e in routes.values()], routes, clashes)


def router(catalog: FixedCatalog) -> Router:
    return Router(catalog)  # duck-typed: all the router asks of a catalog


def view_of(*servers: str, naming: str = "prefixed", **renamed: Any) -> NamespaceView:
    tools = {(server, original): ItemSettings(name=name) for name, (server, original) in renamed.items()}
    return NamespaceView(uuid4(), "team", servers, tools, tools, naming)


def test_a_listed_name_routes_from_the_cache_without_fetching() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo"), "beta": listed("beta", "echo")})
    assert router(catalog).route("tools", "beta__echo") == Route("beta", "echo")
    assert catalog.forgotten == [] and catalog.fetched == []


def test_a_name_missing_from_the_cache_is_looked_up_once_more_in_a_fresh_list() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo"), "beta": listed("beta")},
                           upstream={"beta": listed("beta", "added")})
    assert router(catalog).route("tools", "beta__added") == Route("beta", "added")
    assert catalog.forgotten == ["beta"] and catalog.fetched == ["beta"]  # only its candidate


def test_an_unknown_name_is_invalid_params_after_one_fresh_look() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo")})
    with pytest.raises(RpcError) as unknown:
        router(catalog).route("tools", "alpha__nope")
    assert (unknown.value.code, unknown.value.message) == (INVALID_PARAMS, "Unknown tool: alpha__nope")
    assert catalog.forgotten == ["alpha"] and catalog.fetched == ["alpha"]
    with pytest.raises(RpcError) as no_server:
        router(catalog).route("prompts", "gamma__greet")
    assert (no_server.value.code, no_server.value.message) == (INVALID_PARAMS, "Unknown prompt: gamma__greet")


def test_a_server_whose_secrets_cannot_be_decrypted_is_named_with_its_cause() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo")})
    catalog.unreadable_servers = {"sealed": "secrets of 'sealed' cannot be decrypted"}
    with pytest.raises(RpcError) as failed:
        router(catalog).route("tools", "sealed__echo")
    assert (failed.value.code, failed.value.message) == (UPSTREAM_ERROR, "secrets of 'sealed' cannot be decrypted")
    with pytest.raises(RpcError) as unknown:
        router(catalog).route("tools", "other__echo")
    assert unknown.value.code == INVALID_PARAMS


def test_a_candidate_without_a_list_is_the_upstream_error_of_that_server() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo")}, upstream={"beta": None})
    with pytest.raises(RpcError) as failed:
        router(catalog).route("tools", "beta__echo")
    assert (failed.value.code, failed.value.message) == (UPSTREAM_ERROR, "Upstream server 'beta' is unavailable")
    assert catalog.forgotten == []  # no second look at a server that has no list
    # Listed, but gone when asked again for a name its cached list lacks.
    catalog = FixedCatalog({"alpha": listed("alpha", "echo")}, upstream={"alpha": None})
    assert router(catalog).route("tools", "alpha__echo") == Route("alpha", "echo")
    with pytest.raises(RpcError) as gone:
        router(catalog).route("tools", "alpha__new")
    assert (gone.value.code, gone.value.message) == (UPSTREAM_ERROR, "Upstream server 'alpha' is unavailable")


def test_a_namespace_routes_by_the_names_its_clients_see() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo"), "beta": listed("beta", "echo")},
                           upstream={"alpha": listed("alpha", "echo", "later")})
    view = view_of("alpha", "beta", shout=("beta", "echo"))
    route = router(catalog)
    assert route.route("tools", "shout", view) == Route("beta", "echo")  # renamed: no server prefix
    with pytest.raises(RpcError) as renamed_away:
        route.route("tools", "beta__echo", view)  # only the override finds it
    assert renamed_away.value.message == "Unknown tool: beta__echo"
    assert route.route("tools", "alpha__later", view) == Route("alpha", "later")
    assert "alpha" in catalog.forgotten
    outside = view_of("alpha")
    with pytest.raises(RpcError):
        route.route("tools", "shout", outside)


def test_original_naming_routes_by_the_upstream_names_first_server_first() -> None:
    catalog = FixedCatalog({"alpha": listed("alpha", "echo", "add"), "beta": listed("beta", "echo")})
    view = view_of("beta", "alpha", naming="original")
    route = router(catalog)
    assert route.route("tools", "echo", view) == Route("beta", "echo")  # beta was attached first
    assert route.route("tools", "add", view) == Route("alpha", "add")
    assert route.route("prompts", "echo", view) == Route("beta", "echo")
    with pytest.raises(RpcError) as prefixed:
        route.route("tools", "alpha__add", view)
    assert prefixed.value.message == "Unknown tool: alpha__add"
    renamed = view_of("beta", "alpha", naming="original", hello=("alpha", "echo"))
    assert route.route("prompts", "hello", renamed) == Route("alpha", "echo")
    assert route.route("prompts", "echo", renamed) == Route("beta", "echo")
