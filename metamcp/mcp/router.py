"""Routing: an exposed tool or prompt name, or a resource URI, to its server and original name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from metamcp.mcp import naming
from metamcp.mcp.catalog import Catalog
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.pool import client_error
from metamcp.mcp.protocol import UPSTREAM_ERROR
from metamcp.namespaces import NamespaceView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where an exposed name goes: the server, and the name the upstream knows it by."""

    server: str
    name: str


class Router:
    """Finds names and URIs in the catalog's lists of what a session sees (view None: every
    active server; else one namespace's)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def route(self, kind: str, exposed: str, view: NamespaceView | None = None) -> Route:
        """The server and upstream name of an exposed tool or prompt name; -32602 when unknown.

        Looked up in the cached lists first, then once more after dropping the cached lists of
        the servers the name may belong to (by its `server__` prefix): the upstream may have
        added it since.
        """
        servers = self._catalog.names(view)
        candidates = naming.server_candidates(exposed, servers)
        for fresh in (False, True):
            if fresh:
                self._catalog.forget(kind, candidates)
            found = self._find(kind, exposed, view, candidates)
            if found is not None:
                return found
        unreadable = self._catalog.unreadable(view)
        for server in naming.server_candidates(exposed, list(unreadable)):
            raise RpcError(UPSTREAM_ERROR, unreadable[server])
        label = "tool" if kind == "tools" else "prompt"
        raise RpcError(INVALID_PARAMS, f"Unknown {label}: {exposed}")

    def _find(self, kind: str, exposed: str, view: NamespaceView | None, candidates: list[str]) -> Route | None:
        """`exposed` in the lists as they are now; client_error when a candidate has none."""
        if view is not None:
            # A namespace's tools and prompts are found by the name its clients use (naming and
            # overrides applied), among those of every server it sees: such a name need not
            # name its server.
            item = self._catalog.table(kind, view).routes.get(exposed)
            if item is not None:
                return Route(item.server, item.original)
        for server in candidates:
            server_list = self._catalog.lists(kind, [server]).get(server)
            if server_list is None:  # its failure was logged (and kept for admins) when it happened
                raise client_error(server)
            if view is None and exposed in server_list.routes:
                return Route(server, server_list.routes[exposed])
        return None

    def route_resource(self, uri: str, view: NamespaceView | None = None) -> str:
        """The first server (in the namespace's order, else by name) that listed `uri`, else the
        first whose template matches it; -32602 when none. The lists show each URI once, the
        first server's (catalog.unique_items), so a read goes where the list says."""
        servers = self._catalog.names(view)
        lists = self._catalog.lists("resources", servers)
        for server in servers:
            if server in lists and uri in lists[server].routes:
                return server
        templates = self._catalog.lists("resourceTemplates", servers)
        for server in servers:
            if server in templates and any(
                _template_matches(t, uri) for t in templates[server].routes
            ):
                return server
        raise RpcError(INVALID_PARAMS, f"Unknown resource: {uri}")


def _template_matches(template: str, uri: str) -> bool:
    """RFC 6570 level-1 match: each {var} stands for one or more characters but '/'."""
    pattern = "".join(
        "[^/]+" if part.startswith("{") else re.escape(part)
        for part in re.split(r"(\{[^}]*\})", template)
        if part
    )
    return re.fullmatch(pattern, uri) is not None
