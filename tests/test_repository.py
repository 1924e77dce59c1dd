"""Repository functions against a real PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg2.errors
import pytest

from metamcp import crypto, repository
from metamcp.db import Database


def test_key_lifecycle(db: Database) -> None:
    new = crypto.generate_api_key()
    with db.transaction() as cur:
        row = repository.insert_key(cur, "ci", new.hash, new.prefix)
    assert row["is_active"] and row["last_used_at"] is None and "key_hash" not in row
    with db.transaction() as cur:
        assert repository.find_key_by_hash(cur, new.hash)["id"] == row["id"]
        assert repository.find_key_by_hash(cur, crypto.hash_api_key("mcp_other")) is None
        assert repository.set_key_active(cur, row["id"], False)["is_active"] is False
        assert repository.list_keys(cur) == []
        assert [k["id"] for k in repository.list_keys(cur, include_inactive=True)] == [row["id"]]
        repository.touch_key(cur, row["id"])
        assert repository.get_key(cur, row["id"])["last_used_at"] is not None
        assert repository.delete_key(cur, row["id"]) is True
        assert repository.delete_key(cur, row["id"]) is False
        assert repository.get_key(cur, row["id"]) is None
        assert repository.set_key_active(cur, row["id"], True) is None


def test_only_the_hash_is_stored(db: Database) -> None:
    new = crypto.generate_api_key()
    with db.transaction() as cur:
        repository.insert_key(cur, "ci", new.hash, new.prefix)
        cur.execute("SELECT * FROM api_keys")
        stored = " ".join(str(v) for v in cur.fetchone().values())
    assert new.plain not in stored and new.plain[12:] not in stored


def test_key_lookup_uses_the_unique_index(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO api_keys (name, key_hash, key_prefix) SELECT 'k' || i,"
            " sha256(i::text::bytea), 'mcp_x' FROM generate_series(1, 20000) AS i"
        )
        new = crypto.generate_api_key()
        cur.execute("ANALYZE api_keys")
        cur.execute("EXPLAIN SELECT id FROM api_keys WHERE key_hash = %s", (new.hash,))
        plan = " ".join(row["QUERY PLAN"] for row in cur.fetchall())
    assert "Index" in plan and "api_keys_key_hash_key" in plan


def test_server_crud(db: Database) -> None:
    fields = {"name": "one", "transport": "streamable_http", "url": "http://127.0.0.1:1/mcp",
              "args": ["a"], "headers": {"X-A": "v1:sealed"}}
    with db.transaction() as cur:
        row = repository.insert_server(cur, fields)
        assert isinstance(row["id"], uuid.UUID)
        assert row["args"] == ["a"] and row["headers"] == {"X-A": "v1:sealed"} and row["env"] == {}
        updated = repository.update_server(cur, row["id"], {"is_active": False, "args": []})
        assert updated["is_active"] is False and updated["args"] == []
        assert updated["updated_at"] >= row["updated_at"]
        assert [s["name"] for s in repository.list_servers(cur)] == ["one"]
        assert repository.update_server(cur, uuid.uuid4(), {"is_active": True}) is None
        assert repository.delete_server(cur, row["id"]) is True
        assert repository.get_server(cur, row["id"]) is None


def test_server_name_is_unique_and_checked_by_the_database(db: Database) -> None:
    fields = {"name": "dup", "transport": "stdio", "command": "true"}
    with db.transaction() as cur:
        repository.insert_server(cur, fields)
    with pytest.raises(psycopg2.errors.UniqueViolation), db.transaction() as cur:
        repository.insert_server(cur, fields)
    with pytest.raises(psycopg2.errors.CheckViolation), db.transaction() as cur:
        repository.insert_server(cur, {**fields, "name": "a__b"})
    with pytest.raises(psycopg2.errors.CheckViolation), db.transaction() as cur:
        repository.insert_server(cur, {"name": "nourl", "transport": "sse"})


def test_unknown_columns_are_refused(db: Database) -> None:
    with pytest.raises(ValueError), db.transaction() as cur:
        repository.insert_server(cur, {"name": "x", "id; DROP TABLE api_keys": 1})
