"""Endpoints: a namespace published under a URL-safe name, as MCP, legacy SSE and OpenAPI.

Lookups by name are cached per process and read again after any change of endpoints or
namespaces (both notify topic "namespaces"); while the database is away, the last lookup serves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from metamcp import audit_changes, repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable, NotFound, ValidationFailed
from metamcp.notify import Topic


@dataclass(frozen=True)
class Endpoint:
    id: UUID
    name: str
    namespace_id: UUID
    api_key: bool  # a credential is required
    query_param: bool  # ?api_key= is accepted too


def _public(row: Mapping[str, Any]) -> dict[str, Any]:
    public = {k: v for k, v in row.items() if not k.startswith("auth_")}
    public["auth"] = {"api_key": row["auth_api_key"], "query_param": row["auth_query_param"]}
    return public


class EndpointRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_name: dict[str, Endpoint | None] = {}
        #: Lookups from before the last change: served only while the database is away.
        self._stale: dict[str, Endpoint | None] = {}
        self._lock = threading.Lock()

    def list_all(self) -> list[dict[str, Any]]:
        with self._db.transaction() as cur:
            return [_public(row) for row in repository.list_endpoints(cur)]

    def get(self, endpoint_id: UUID) -> dict[str, Any]:
        with self._db.transaction() as cur:
            return _public(self._existing(cur, endpoint_id))

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        values = {"description": "", "auth_api_key": True, "auth_query_param": False}
        values.update(self._columns(fields))
        with self._db.transaction() as cur:
            endpoint_id = self._write(cur, values, lambda: repository.insert_endpoint(cur, values))
            row = self._existing(cur, endpoint_id)
            audit_changes.record(cur, "endpoint.create", endpoint_id, None, row)
        return _public(row)

    def update(self, endpoint_id: UUID, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._db.transaction() as cur:
            current = self._existing(cur, endpoint_id)
            values = {c: current[c] for c in repository.ENDPOINT_COLUMNS}
            values.update(self._columns(fields))
            self._write(cur, values, lambda: repository.update_endpoint(cur, endpoint_id, values))
            row = self._existing(cur, endpoint_id)
            audit_changes.record(cur, "endpoint.update", endpoint_id, current, row)
        return _public(row)

    def delete(self, endpoint_id: UUID) -> None:
        with self._db.transaction() as cur:
            row = self._existing(cur, endpoint_id)
            if not repository.delete_endpoint(cur, endpoint_id):
                raise NotFound(f"No endpoint with id {endpoint_id}.")
            repository.notify_change(cur, Topic.NAMESPACES, endpoint=endpoint_id)
            audit_changes.record(cur, "endpoint.delete", endpoint_id, row, None)

    def by_name(self, name: str) -> Endpoint | None:
        """The endpoint serving /metamcp/{name}/...; cached, None when there is none."""
        if name in self._by_name:
            return self._by_name[name]
        try:
            with self._db.transaction() as cur:
                row = repository.get_endpoint(cur, name=name)
        except DatabaseUnavailable:
            if name not in self._stale:
                raise
            return self._stale[name]
        endpoint = None if row is None else Endpoint(
            row["id"], row["name"], row["namespace_id"], row["auth_api_key"], row["auth_query_param"]
        )
        with self._lock:
            if len(self._by_name) > 10_000:  # unknown names are cached too: bound the cache
                self._by_name.clear()
            self._by_name[name] = endpoint
        return endpoint

    def on_change(self, _message: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            # Known endpoints only (unknown names are cached too): bounded by the endpoints table.
            self._stale.update((k, v) for k, v in self._by_name.items() if v is not None)
            self._by_name = {}

    # --- internals -----------------------------------------------------------------------

    @staticmethod
    def _columns(fields: Mapping[str, Any]) -> dict[str, Any]:
        values = {k: v for k, v in fields.items() if k in ("name", "namespace_id", "description")}
        auth = fields.get("auth") or {}
        if "api_key" in auth:
            values["auth_api_key"] = auth["api_key"]
        if "query_param" in auth:
            values["auth_query_param"] = auth["query_param"]
        return values

    def _write(self, cur: Any, values: Mapping[str, Any], write: Callable[[], Any]) -> Any:
        if repository.get_namespace(cur, values["namespace_id"]) is None:
            raise ValidationFailed("No such namespace.",
                                   {"namespace_id": [f"No namespace with id {values['namespace_id']}."]})
        with repository.conflict_as(cur, f"An endpoint named {values['name']!r} already exists; choose another name."):
            result = write()
        repository.notify_change(cur, Topic.NAMESPACES, endpoint=values["name"])
        return result

    @staticmethod
    def _existing(cur: Any, endpoint_id: UUID) -> dict[str, Any]:
        row = repository.get_endpoint(cur, endpoint_id=endpoint_id)
        if row is None:
            raise NotFound(f"No endpoint with id {endpoint_id}.")
        return row
