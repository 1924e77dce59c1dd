"""Namespaces: servers grouped, each tool switched on or off and renamed per namespace.

The tools table holds every tool the gateway has seen upstream (metamcp.mcp.catalog hands
each fresh tools/list to sync_tools, which writes only what changed). A tool's status and
overrides in a namespace live in namespace_tools; no row means active and unchanged.

The gateway reads a namespace through NamespaceView, cached per process and read again after
any change (topic "namespaces", and "servers" since views name servers); while the database
is away, the last view read keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg2.errors

from metamcp import repository
from metamcp.db import Database
from metamcp.errors import Conflict, DatabaseUnavailable, NotFound
from metamcp.mcp import naming
from metamcp.notify import Topic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolSettings:
    """A tool's status and overrides in one namespace."""

    status: str = "active"
    name: str | None = None
    title: str | None = None
    description: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def apply(self, tool: dict[str, Any], exposed: str) -> dict[str, Any]:
        """The tool as clients of the namespace see it (`exposed` is its default name)."""
        shown = {**tool, "name": self.name or exposed}
        if self.title is not None:
            shown["title"] = self.title
        if self.description is not None:
            shown["description"] = self.description
        if self.annotations:
            shown["annotations"] = {**(tool.get("annotations") or {}), **self.annotations}
        return shown


DEFAULT_SETTINGS = ToolSettings()


@dataclass(frozen=True)
class NamespaceView:
    """What the gateway needs of a namespace: its active servers and its tool settings."""

    id: UUID
    name: str
    servers: frozenset[str]  # names of the servers active in this namespace
    tools: Mapping[tuple[str, str], ToolSettings]  # (server name, upstream tool name) -> settings

    def settings(self, server: str, original: str) -> ToolSettings:
        return self.tools.get((server, original), DEFAULT_SETTINGS)


def _public_tool(row: Mapping[str, Any]) -> dict[str, Any]:
    definition = row["definition"]
    settings = _settings(row)
    shown = settings.apply(definition, naming.expose(row["server_name"], row["original_name"]))
    return {
        "id": row["id"],
        "server_id": row["server_id"],
        "server_name": row["server_name"],
        "server_status": row["server_status"],
        "original_name": row["original_name"],
        "name": shown["name"],
        "status": settings.status,
        "title": shown.get("title"),
        "description": shown.get("description"),
        "annotations": shown.get("annotations") or {},
        "input_schema": definition.get("inputSchema") or {},
        "overrides": {"name": settings.name, "title": settings.title, "description": settings.description,
                      "annotations": dict(settings.annotations)},
    }


def _taken(name: str) -> str:
    return f"A namespace named {name!r} already exists; choose another name."


def _settings(row: Mapping[str, Any]) -> ToolSettings:
    if row["status"] is None:
        return DEFAULT_SETTINGS
    return ToolSettings(row["status"], row["name"], row["title"], row["description"],
                        row["annotations"] or {})


def _merge(settings: ToolSettings, change: Mapping[str, Any]) -> dict[str, Any]:
    """Settings after a PATCH: given fields replace, annotations merge (null removes a key)."""
    merged: dict[str, Any] = {
        "status": change.get("status", settings.status),
        **{k: change.get(k, getattr(settings, k)) for k in ("name", "title", "description")},
    }
    annotations = dict(settings.annotations)
    if "annotations" in change:
        if change["annotations"] is None:
            annotations = {}
        else:
            for key, value in change["annotations"].items():
                if value is None:
                    annotations.pop(key, None)
                else:
                    annotations[key] = value
    merged["annotations"] = annotations
    return merged


class NamespaceRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._views: dict[UUID, NamespaceView | None] = {}
        #: Views from before the last change: served only while the database is away.
        self._stale: dict[UUID, NamespaceView | None] = {}
        self._synced: dict[UUID, str] = {}  # server id -> digest of the tool list last recorded
        self._lock = threading.Lock()

    # --- namespaces ----------------------------------------------------------------------

    def list_all(self) -> list[dict[str, Any]]:
        with self._db.transaction() as cur:
            return [self._public(cur, row) for row in repository.list_namespaces(cur)]

    def get(self, namespace_id: UUID) -> dict[str, Any]:
        with self._db.transaction() as cur:
            return self._public(cur, self._existing(cur, namespace_id))

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._db.transaction() as cur:
            with repository.conflict_as(cur, _taken(fields["name"])):
                row = repository.insert_namespace(cur, fields["name"], fields.get("description", ""))
            self._notify(cur, row["id"])
            public = self._public(cur, row)
        return public

    def update(self, namespace_id: UUID, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._db.transaction() as cur:
            current = self._existing(cur, namespace_id)
            merged = {**current, **fields}
            with repository.conflict_as(cur, _taken(merged["name"])):
                repository.update_namespace(cur, namespace_id, merged["name"], merged["description"])
            self._notify(cur, namespace_id)
            public = self._public(cur, self._existing(cur, namespace_id))
        return public

    def delete(self, namespace_id: UUID) -> None:
        with self._db.transaction() as cur:
            self._existing(cur, namespace_id)
            # PostgreSQL reports an ON DELETE RESTRICT as either, depending on the version.
            with repository.conflict_as(cur, "Endpoints still publish this namespace; delete them first.",
                                        psycopg2.errors.RestrictViolation, psycopg2.errors.ForeignKeyViolation):
                repository.delete_namespace(cur, namespace_id)
            self._notify(cur, namespace_id)
            repository.notify_change(cur, Topic.KEYS)  # keys scoped to it now reach less

    def attach(self, namespace_id: UUID, server_id: UUID, status: str) -> dict[str, Any]:
        with self._db.transaction() as cur:
            self._existing(cur, namespace_id)
            if repository.get_server(cur, server_id) is None:
                raise NotFound(f"No server with id {server_id}.")
            repository.attach_server(cur, namespace_id, server_id, status)
            self._notify(cur, namespace_id)
            public = self._public(cur, self._existing(cur, namespace_id))
        return public

    def detach(self, namespace_id: UUID, server_id: UUID) -> None:
        with self._db.transaction() as cur:
            self._existing(cur, namespace_id)
            if not repository.detach_server(cur, namespace_id, server_id):
                raise NotFound(f"Server {server_id} is not attached to this namespace.")
            self._notify(cur, namespace_id)

    # --- tools ---------------------------------------------------------------------------

    def tools(self, namespace_id: UUID) -> list[dict[str, Any]]:
        with self._db.transaction() as cur:
            self._existing(cur, namespace_id)
            return [_public_tool(row) for row in repository.namespace_tools(cur, namespace_id)]

    def change_tools(self, namespace_id: UUID, changes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Apply status and override changes to tools of the namespace, all or none."""
        with self._db.transaction() as cur:
            self._existing(cur, namespace_id, lock=True)  # one writer per namespace at a time
            rows = {row["id"]: row for row in repository.namespace_tools(cur, namespace_id)}
            pending: dict[UUID, dict[str, Any]] = {}
            for change in changes:
                row = rows.get(change["id"])
                if row is None:
                    raise NotFound(f"No tool with id {change['id']} in this namespace.")
                base = ToolSettings(**pending[row["id"]]) if row["id"] in pending else _settings(row)
                pending[row["id"]] = _merge(base, change)
            self._check_names(rows, pending)
            for tool_id, settings in pending.items():
                repository.upsert_namespace_tool(cur, namespace_id, tool_id, settings)
            self._notify(cur, namespace_id)
            public = [_public_tool(row) for row in repository.namespace_tools(cur, namespace_id)]
        return public

    @staticmethod
    def _check_names(rows: Mapping[UUID, Mapping[str, Any]], pending: Mapping[UUID, Mapping[str, Any]]) -> None:
        """Every tool of the namespace keeps a name of its own (409 otherwise)."""
        owners: dict[str, UUID] = {}
        for tool_id, row in rows.items():
            override = pending[tool_id]["name"] if tool_id in pending else row["name"]
            exposed = override or naming.expose(row["server_name"], row["original_name"])
            other = owners.setdefault(exposed, tool_id)
            if other != tool_id and (tool_id in pending or other in pending):
                raise Conflict(
                    f"Another tool of this namespace is already named {exposed!r}.",
                    {"name": exposed, "tools": [str(other), str(tool_id)]},
                )

    def sync_tools(self, server_id: UUID, tools: Iterable[Mapping[str, Any]]) -> None:
        """Record a server's tools as the upstream lists them; a no-op when nothing changed."""
        definitions = [dict(t) for t in tools if isinstance(t.get("name"), str)]
        digest = hashlib.sha256(json.dumps(definitions, sort_keys=True, default=str).encode()).hexdigest()
        if self._synced.get(server_id) == digest:
            return
        try:
            with self._db.transaction() as cur:
                written = repository.upsert_tools(cur, server_id, definitions)
        except psycopg2.errors.ForeignKeyViolation:
            return  # the server was deleted meanwhile
        if written:
            logger.info("recorded %d changed tools of server %s", written, server_id)
        self._synced[server_id] = digest

    # --- the gateway's view ----------------------------------------------------------------

    def view(self, namespace_id: UUID) -> NamespaceView | None:
        """The namespace as the gateway serves it; cached until the next change."""
        if namespace_id in self._views:
            return self._views[namespace_id]
        try:
            view = self._load_view(namespace_id)
        except DatabaseUnavailable:
            if namespace_id not in self._stale:
                raise
            return self._stale[namespace_id]
        with self._lock:
            self._views[namespace_id] = view
        return view

    def _load_view(self, namespace_id: UUID) -> NamespaceView | None:
        with self._db.transaction() as cur:
            row = repository.get_namespace(cur, namespace_id)
            view = None
            if row is not None:
                servers = repository.namespace_servers(cur, namespace_id)
                # Settings of tools the upstream does not list right now too: when it lists
                # them again (the view is not reloaded for that), they must still apply.
                tools = repository.namespace_tools(cur, namespace_id, listed_only=False)
                view = NamespaceView(
                    namespace_id,
                    row["name"],
                    frozenset(s["name"] for s in servers if s["status"] == "active" and s["is_active"]),
                    {(t["server_name"], t["original_name"]): _settings(t)
                     for t in tools if t["status"] is not None},
                )
        return view

    def on_change(self, _message: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self._stale.update(self._views)
            self._views = {}

    # --- internals -----------------------------------------------------------------------

    def _notify(self, cur: Any, namespace_id: UUID) -> None:
        repository.notify_change(cur, Topic.NAMESPACES, id=namespace_id)

    @staticmethod
    def _existing(cur: Any, namespace_id: UUID, lock: bool = False) -> dict[str, Any]:
        row = repository.get_namespace(cur, namespace_id, lock=lock)
        if row is None:
            raise NotFound(f"No namespace with id {namespace_id}.")
        return row

    @staticmethod
    def _public(cur: Any, row: Mapping[str, Any]) -> dict[str, Any]:
        servers = repository.namespace_servers(cur, row["id"])
        return {**row, "servers": [
            {"id": s["id"], "name": s["name"], "status": s["status"], "is_active": s["is_active"]}
            for s in servers
        ]}

