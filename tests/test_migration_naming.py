"""Migration 0006 on a database with namespaces: naming prefixed, servers numbered by name."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
from yoyo import get_backend, read_migrations

from metamcp.db import MIGRATIONS_DIR

from .conftest import scratch_database

NAMING = "0006_namespace_prompts"


@pytest.fixture
def fresh_url(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "metamcp_mig", migrated=False) as url:
        yield url


def test_existing_namespaces_keep_prefixed_names_and_their_server_order(fresh_url: str) -> None:
    backend = get_backend(fresh_url)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id <= "0004_key_roles")))
    conn = psycopg2.connect(fresh_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("INSERT INTO namespaces (name) VALUES ('a'), ('b') RETURNING id")
        first, second = (row[0] for row in cur.fetchall())
        servers = {}
        for name in ("zeta", "alpha", "mid"):  # inserted out of name order
            cur.execute("INSERT INTO mcp_servers (name, transport, url) VALUES (%s, 'streamable_http', 'http://x')"
                        " RETURNING id", (name,))
            servers[name] = cur.fetchone()[0]
        for namespace, names in ((first, ("zeta", "alpha", "mid")), (second, ("mid", "zeta"))):
            for name in names:
                cur.execute("INSERT INTO namespace_servers (namespace_id, server_id) VALUES (%s, %s)",
                            (namespace, servers[name]))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id == NAMING)))
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT naming FROM namespaces")
        assert cur.fetchall() == [("prefixed",)]

        def order(namespace: object) -> list[str]:
            cur.execute("SELECT s.name FROM namespace_servers ns JOIN mcp_servers s ON s.id = ns.server_id"
                        " WHERE ns.namespace_id = %s ORDER BY ns.position", (namespace,))
            return [row[0] for row in cur.fetchall()]

        assert order(first) == ["alpha", "mid", "zeta"] and order(second) == ["mid", "zeta"]
        cur.execute("INSERT INTO namespace_servers (namespace_id, server_id) VALUES (%s, %s)",
                    (second, servers["alpha"]))
        assert order(second) == ["mid", "zeta", "alpha"]  # attached later: after the others
        with pytest.raises(psycopg2.IntegrityError):
            cur.execute("UPDATE namespaces SET naming = 'short'")
    conn.close()
