"""Migration 0004 on a database that has keys: unscoped keys stay admin, scoped ones become client."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg2
import pytest
from yoyo import get_backend, read_migrations

from metamcp.db import MIGRATIONS_DIR

from .conftest import scratch_database

ROLES = "0004_key_roles"


@pytest.fixture
def fresh_url(database_url: str) -> Iterator[str]:
    """An empty database on the test server, dropped afterwards."""
    with scratch_database(database_url, "metamcp_mig", migrated=False) as url:
        yield url


def test_existing_keys_get_the_role_matching_their_scope(fresh_url: str) -> None:
    backend = get_backend(fresh_url)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id < ROLES)))
    conn = psycopg2.connect(fresh_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'")
        assert "role" not in {row[0] for row in cur.fetchall()}
        cur.execute("INSERT INTO namespaces (name) VALUES ('research') RETURNING id")
        namespace_id = cur.fetchone()[0]
        for name, scoped in (("everything", False), ("limited", True), ("limited-to-nothing", True)):
            cur.execute("INSERT INTO api_keys (name, key_hash, key_prefix, scoped) VALUES (%s, %s, 'mcp_x', %s)"
                        " RETURNING id", (name, secrets.token_bytes(32), scoped))
            if name == "limited":
                cur.execute("INSERT INTO api_key_namespaces VALUES (%s, %s)", (cur.fetchone()[0], namespace_id))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id == ROLES)))
    with conn.cursor() as cur:
        cur.execute("SELECT name, role, scoped, rate_limit FROM api_keys ORDER BY id")
        assert cur.fetchall() == [("everything", "admin", False, None), ("limited", "client", True, None),
                                  ("limited-to-nothing", "client", True, None)]
        cur.execute("SELECT count(*) FROM api_key_namespaces")
        assert cur.fetchone()[0] == 1  # scopes are kept as they were
        # An admin key is never limited; roles and rates are checked by the database too.
        for statement in ("UPDATE api_keys SET role = 'admin' WHERE name = 'limited'",
                          "UPDATE api_keys SET role = 'root' WHERE name = 'everything'",
                          "UPDATE api_keys SET rate_limit = 0 WHERE name = 'everything'"):
            with pytest.raises(psycopg2.IntegrityError):
                cur.execute(statement)
        cur.execute("INSERT INTO api_keys (name, key_hash, key_prefix) VALUES ('new', %s, 'mcp_y') RETURNING role",
                    (secrets.token_bytes(32),))
        assert cur.fetchone()[0] == "client"  # a key inserted without a role gets the least one
    conn.close()
    backend.connection.close()
