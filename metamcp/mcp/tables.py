"""The exposed lists' data: the kinds of list, one upstream's list as exposed, and the tables of
what a session sees, where each name or URI is listed once, the first server's (pure: no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metamcp.namespaces import NamespaceView


@dataclass(frozen=True)
class Kind:
    method: str
    key: str
    capability: str
    named: bool  # tools and prompts get `server__` names; resources keep their URIs


KINDS = {
    "tools": Kind("tools/list", "tools", "tools", True),
    "prompts": Kind("prompts/list", "prompts", "prompts", True),
    "resources": Kind("resources/list", "resources", "resources", False),
    "resourceTemplates": Kind("resources/templates/list", "resourceTemplates", "resources", False),
}
#: The kinds whose items the gateway records in the database (switched and renamed per namespace).
RECORDED = frozenset({"tools", "prompts"})
#: What one item of each kind is called (admin API, logs).
KIND_LABELS = {"tools": "tool", "prompts": "prompt", "resources": "resource",
               "resourceTemplates": "resourceTemplate"}


@dataclass
class ServerList:
    """One upstream's list of one kind, as exposed, with its routes."""

    items: list[dict[str, Any]]
    routes: dict[str, str]  # exposed name or URI -> the upstream's own name or URI
    expires: float


@dataclass(frozen=True)
class ExposedItem:
    """A tool or prompt as a namespace's clients see it (overrides applied), and where it comes from."""

    item: dict[str, Any]
    server: str
    original: str  # the upstream's own name


@dataclass(frozen=True)
class Clash:
    """Several servers list one name or URI: the first keeps it, the others' items are hidden."""

    kind: str  # tools, prompts, resources, resourceTemplates
    key: str  # the exposed name, URI or URI template
    servers: tuple[str, ...]  # the server that keeps it first

    def public(self) -> dict[str, Any]:
        """As the admin API shows it."""
        field = "name" if KINDS[self.kind].named else "uri"
        return {"kind": KIND_LABELS[self.kind], field: self.key, "servers": list(self.servers),
                "served_by": self.servers[0]}


@dataclass
class Table:
    """What a session sees of one kind (a namespace's, or every active server's with view
    None), with the view and lists it was made from; kept until the view or a list changes
    (both are replaced, never modified, so identity tells)."""

    view: NamespaceView | None
    servers: list[str]
    lists: list[ServerList | None]
    items: list[dict[str, Any]]
    routes: dict[str, ExposedItem]  # a namespace's tools and prompts by the name its clients use
    clashes: list[Clash]

    def made_from(self, view: NamespaceView | None, servers: list[str], lists: list[ServerList | None]) -> bool:
        return (self.view is view and self.servers == servers
                and all(a is b for a, b in zip(self.lists, lists, strict=True)))


def namespace_items(kind: str, view: NamespaceView, servers: list[str],
                    lists: list[ServerList | None]) -> tuple[dict[str, ExposedItem], list[Clash]]:
    """The namespace's active tools or prompts (from each server's list, None: none) by the
    name its clients use, and the names several claim. Overrides are applied first, so an item
    is found by its exposed name only and its status is that of the item the name stands for.
    A name claimed twice goes to the server first in the namespace (then the upstream's order).
    """
    found: dict[str, ExposedItem] = {}
    claims: dict[str, list[str]] = {}
    for server, server_list in zip(servers, lists, strict=True):
        if server_list is None:
            continue
        for item in server_list.items:
            original = server_list.routes[item["name"]]
            settings = view.settings(kind, server, original)
            if not settings.active:
                continue
            exposed = original if view.naming == "original" else item["name"]
            shown = settings.apply(item, exposed)
            claims.setdefault(shown["name"], []).append(server)
            if shown["name"] not in found:
                found[shown["name"]] = ExposedItem(shown, server, original)
    return found, [Clash(kind, key, tuple(owners)) for key, owners in claims.items() if len(owners) > 1]


def unique_items(kind: str, servers: list[str],
                 lists: list[ServerList | None]) -> tuple[list[dict[str, Any]], list[Clash]]:
    """Every server's items in server order, each name or URI once: the first server's."""
    spec = KINDS[kind]
    items: list[dict[str, Any]] = []
    claims: dict[str, list[str]] = {}
    for server, server_list in zip(servers, lists, strict=True):
        for item in server_list.items if server_list is not None else []:
            key = item.get("name") if spec.named else item.get("uri") or item.get("uriTemplate")
            if not isinstance(key, str):
                items.append(item)  # nothing to route it by, nothing it can collide with
                continue
            owners = claims.setdefault(key, [])
            if not owners:
                items.append(item)
            if server not in owners:
                owners.append(server)
    return items, [Clash(kind, key, tuple(owners)) for key, owners in claims.items() if len(owners) > 1]
