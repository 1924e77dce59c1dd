"""Namespaces: servers grouped in order, each tool and prompt switched on or off and renamed.

The tools and prompts tables hold every tool and prompt the gateway has seen upstream
(metamcp.mcp.catalog hands each fresh list to sync, which writes only what changed). Their
status and overrides in a namespace live in namespace_tools / namespace_prompts; no row means
active and unchanged. A namespace names them `server__name` (naming "prefixed") or as the
upstream does ("original"); a change that would give two of them one name is refused (409).

The gateway reads a namespace through NamespaceView, cached per process and read again after
any change (topic "namespaces", and "servers" since views name servers); while the database
is away, the last view read keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

import psycopg2.errors

from metamcp import audit_changes, repository
from metamcp.db import Database
from metamcp.errors import Conflict, DatabaseUnavailable, NotFound
from metamcp.mcp import naming
from metamcp.notify import Topic

logger = logging.getLogger(__name__)

#: The kinds of named items a namespace switches and renames, and what one is called.
KINDS = {"tools": "tool", "prompts": "prompt"}
#: How a namespace names tools and prompts: `server__name`, or the upstream's own name.
NAMINGS = ("prefixed", "original")
_ROWS = {"tools": repository.namespace_tools, "prompts": repository.namespace_prompts}
_UPSERT = {"tools": repository.upsert_namespace_tool, "prompts": repository.upsert_namespace_prompt}


@dataclass(frozen=True)
class ItemSettings:
    """A tool's or prompt's status and overrides in one namespace (prompts have no annotations)."""

    status: str = "active"
    name: str | None = None
    title: str | None = None
    description: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def apply(self, item: dict[str, Any], exposed: str) -> dict[str, Any]:
        """The item as clients of the namespace see it (`exposed` is its default name)."""
        shown = {**item, "name": self.name or exposed}
        if self.title is not None:
            shown["title"] = self.title
        if self.description is not None:
            shown["description"] = self.description
        if self.annotations:
            shown["annotations"] = {**(item.get("annotations") or {}), **self.annotations}
        return shown


DEFAULT_SETTINGS = ItemSettings()


def default_name(naming_rule: str, server: str, original: str) -> str:
    """The name clients see for an item without a name override."""
    return original if naming_rule == "original" else naming.expose(server, original)


@dataclass(frozen=True)
class NamespaceView:
    """What the gateway needs of a namespace: its active servers in order, its naming, and the
    settings of its tools and prompts."""

    id: UUID
    name: str
    servers: tuple[str, ...]  # names of the servers active in this namespace, first attached first
    tools: Mapping[tuple[str, str], ItemSettings]  # (server name, upstream name) -> settings
    prompts: Mapping[tuple[str, str], ItemSettings] = field(default_factory=dict)
    naming: str = "prefixed"

    def settings(self, kind: str, server: str, original: str) -> ItemSettings:
        table = self.tools if kind == "tools" else self.prompts
        return table.get((server, original), DEFAULT_SETTINGS)


def _public_item(kind: str, row: Mapping[str, Any], naming_rule: str) -> dict[str, Any]:
    definition = row["definition"]
    settings = _settings(row)
    shown = settings.apply(definition, default_name(naming_rule, row["server_name"], row["original_name"]))
    public = {
        "id": row["id"],
        "server_id": row["server_id"],
        "server_name": row["server_name"],
        "server_status": row["server_status"],
        "original_name": row["original_name"],
        "name": shown["name"],
        "status": settings.status,
        "title": shown.get("title"),
        "description": shown.get("description"),
        "overrides": {"name": settings.name, "title": settings.title, "description": settings.description},
    }
    if kind == "tools":
        public["annotations"] = shown.get("annotations") or {}
        public["input_schema"] = definition.get("inputSchema") or {}
        public["overrides"]["annotations"] = dict(settings.annotations)
    else:
        public["arguments"] = definition.get("arguments") or []
    return public


def _taken(name: str) -> str:
    return f"A namespace named {name!r} already exists; choose another name."


def _settings(row: Mapping[str, Any]) -> ItemSettings:
    if row["status"] is None:
        return DEFAULT_SETTINGS
    return ItemSettings(row["status"], row["name"], row["title"], row["description"], row["annotations"] or {})


def _merge(settings: ItemSettings, change: Mapping[str, Any]) -> dict[str, Any]:
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


#: Whether a change touched this item (kind, row): only clashes involving one are refused.
Touched = Callable[[str, Mapping[str, Any]], bool]


def check_names(kind: str, rows: Sequence[Mapping[str, Any]], naming_rule: str, touched: Touched,
                pending: Mapping[UUID, Mapping[str, Any]] | None = None) -> None:
    """Every published item of a kind keeps a name of its own: Conflict (409) naming both
    servers when a change would give two one name.

    A name is held by a listed, active item of a server active in the namespace, and by every
    name override (the database keeps those unique even while off). `rows` are the namespace's
    items, listed or not, first server first; `pending`: settings about to be written.
    """
    owners: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        settings = ItemSettings(**pending[row["id"]]) if pending and row["id"] in pending else _settings(row)
        if settings.name is not None:
            exposed = settings.name
        elif row["listed"] and settings.active and row["server_status"] == "active":
            exposed = default_name(naming_rule, row["server_name"], row["original_name"])
        else:
            continue
        other = owners.setdefault(exposed, row)
        if other is not row and (touched(kind, row) or touched(kind, other)):
            label = KINDS[kind]
            raise Conflict(
                f"The {label} {other['original_name']!r} of server {other['server_name']!r} and the {label} "
                f"{row['original_name']!r} of server {row['server_name']!r} would both be named "
                f"{exposed!r} in this namespace; rename or switch off one of them.",
                {"kind": label, "name": exposed, "servers": [other["server_name"], row["server_name"]],
                 "ids": [str(other["id"]), str(row["id"])]},
            )


class NamespaceRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._views: dict[UUID, NamespaceView | None] = {}
        #: Views from before the last change: served only while the database is away.
        self._stale: dict[UUID, NamespaceView | None] = {}
        self._synced: dict[tuple[str, UUID], str] = {}  # (kind, server id) -> digest of the list last recorded
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
                row = repository.insert_namespace(cur, fields["name"], fields.get("description", ""),
                                                  fields.get("naming", "prefixed"))
            self._notify(cur, row["id"])
            public = self._public(cur, row)
            audit_changes.record(cur, "namespace.create", row["id"], None, public)
        return public

    def update(self, namespace_id: UUID, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Rename, describe or switch the naming of a namespace (409 when the new naming would
        give two tools or prompts one name)."""
        with self._db.transaction() as cur:
            current = self._existing(cur, namespace_id, lock=True)
            before = self._public(cur, current)
            merged = {**current, **fields}
            with repository.conflict_as(cur, _taken(merged["name"])):
                repository.update_namespace(cur, namespace_id, merged["name"], merged["description"],
                                            merged["naming"])
            if merged["naming"] != current["naming"]:
                self._check_names(cur, namespace_id, merged["naming"], lambda _kind, _row: True)
            self._notify(cur, namespace_id)
            public = self._public(cur, self._existing(cur, namespace_id))
            audit_changes.record(cur, "namespace.update", namespace_id, before, public)
        return public

    def delete(self, namespace_id: UUID) -> None:
        with self._db.transaction() as cur:
            before = self._public(cur, self._existing(cur, namespace_id))
            # PostgreSQL reports an ON DELETE RESTRICT as either, depending on the version.
            with repository.conflict_as(cur, "Endpoints still publish this namespace; delete them first.",
                                        psycopg2.errors.RestrictViolation, psycopg2.errors.ForeignKeyViolation):
                repository.delete_namespace(cur, namespace_id)
            self._notify(cur, namespace_id)
            repository.notify_change(cur, Topic.KEYS)  # keys scoped to it now reach less
            audit_changes.record(cur, "namespace.delete", namespace_id, before, None)

    def attach(self, namespace_id: UUID, server_id: UUID, status: str) -> dict[str, Any]:
        """Attach a server (after those attached before) or change its status there; 409 when its
        tools or prompts would take a name another server's hold."""
        with self._db.transaction() as cur:
            namespace = self._existing(cur, namespace_id, lock=True)
            server = repository.get_server(cur, server_id)
            if server is None:
                raise NotFound(f"No server with id {server_id}.")
            before = self._public(cur, namespace)
            repository.attach_server(cur, namespace_id, server_id, status)
            if status == "active":
                self._check_names(cur, namespace_id, namespace["naming"],
                                  lambda _kind, row: row["server_id"] == server_id)
            self._notify(cur, namespace_id)
            public = self._public(cur, namespace)
            audit_changes.record(cur, "namespace.attach", namespace_id, before, public, server=server["name"])
        return public

    def detach(self, namespace_id: UUID, server_id: UUID) -> None:
        with self._db.transaction() as cur:
            before = self._public(cur, self._existing(cur, namespace_id))
            if not repository.detach_server(cur, namespace_id, server_id):
                raise NotFound(f"Server {server_id} is not attached to this namespace.")
            self._notify(cur, namespace_id)
            audit_changes.record(cur, "namespace.detach", namespace_id, before,
                                 self._public(cur, self._existing(cur, namespace_id)))

    # --- tools and prompts ---------------------------------------------------------------

    def items(self, kind: str, namespace_id: UUID) -> list[dict[str, Any]]:
        """The tools or prompts of the namespace's servers, with their status and overrides."""
        with self._db.transaction() as cur:
            namespace = self._existing(cur, namespace_id)
            return [_public_item(kind, row, namespace["naming"]) for row in _ROWS[kind](cur, namespace_id)]

    def change(self, kind: str, namespace_id: UUID, changes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Apply status and override changes to tools or prompts of the namespace, all or none."""
        label = KINDS[kind]
        with self._db.transaction() as cur:
            namespace = self._existing(cur, namespace_id, lock=True)  # one writer per namespace at a time
            every = _ROWS[kind](cur, namespace_id, listed_only=False)
            rows = {row["id"]: row for row in every if row["listed"]}
            pending: dict[UUID, dict[str, Any]] = {}
            for change in changes:
                row = rows.get(change["id"])
                if row is None:
                    raise NotFound(f"No {label} with id {change['id']} in this namespace.")
                base = ItemSettings(**pending[row["id"]]) if row["id"] in pending else _settings(row)
                pending[row["id"]] = _merge(base, change)
            check_names(kind, every, namespace["naming"], lambda _kind, row: row["id"] in pending, pending)
            for item_id, settings in pending.items():
                _UPSERT[kind](cur, namespace_id, item_id, settings)
            self._notify(cur, namespace_id)
            audit_changes.record(
                cur, f"namespace.{kind}", namespace_id,
                {str(i): {"original_name": rows[i]["original_name"], **asdict(_settings(rows[i]))} for i in pending},
                {str(i): {"original_name": rows[i]["original_name"], **settings} for i, settings in pending.items()})
            public = [_public_item(kind, row, namespace["naming"]) for row in _ROWS[kind](cur, namespace_id)]
        return public

    def sync(self, kind: str, server_id: UUID, items: Iterable[Mapping[str, Any]]) -> None:
        """Record a server's tools or prompts as the upstream lists them; a no-op when nothing
        changed."""
        definitions = [dict(t) for t in items if isinstance(t.get("name"), str)]
        digest = hashlib.sha256(json.dumps(definitions, sort_keys=True, default=str).encode()).hexdigest()
        if self._synced.get((kind, server_id)) == digest:
            return
        try:
            with self._db.transaction() as cur:
                written = repository.upsert_items(cur, kind, server_id, definitions)
        except psycopg2.errors.ForeignKeyViolation:
            return  # the server was deleted meanwhile
        if written:
            logger.info("recorded %d changed %s of server %s", written, kind, server_id)
        self._synced[(kind, server_id)] = digest

    @staticmethod
    def _check_names(cur: Any, namespace_id: UUID, naming_rule: str, touched: Touched) -> None:
        """check_names() of the namespace as written so far in this transaction."""
        for kind, rows in _ROWS.items():
            check_names(kind, rows(cur, namespace_id, listed_only=False), naming_rule, touched)

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
                # Settings of items the upstream does not list right now too: when it lists
                # them again (the view is not reloaded for that), they must still apply.
                settings = {kind: {(t["server_name"], t["original_name"]): _settings(t)
                                   for t in rows(cur, namespace_id, listed_only=False) if t["status"] is not None}
                            for kind, rows in _ROWS.items()}
                view = NamespaceView(
                    namespace_id,
                    row["name"],
                    tuple(s["name"] for s in servers if s["status"] == "active" and s["is_active"]),
                    settings["tools"],
                    settings["prompts"],
                    row["naming"],
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

