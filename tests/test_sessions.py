"""Session store: the bounded LRU cache, expiry of idle sessions and the periodic purge."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg2

from metamcp.db import Database
from metamcp.mcp.sessions import PURGE_LOCK, SessionPurger, SessionStore, client_capabilities
from metamcp.notify import ChangeListener, Topic

from .conftest import TransactionCounter

MakeKey = Callable[..., tuple[int, str]]


def age(db: Database, session_id: str, seconds: float) -> None:
    """Pretend the session was last used `seconds` ago (as another worker's clock would see it)."""
    with db.transaction() as cur:
        cur.execute("UPDATE mcp_sessions SET last_used_at = now() - make_interval(secs => %s)"
                    " WHERE id = %s", (seconds, session_id))


def test_cache_is_a_bounded_lru(db: Database, make_key: MakeKey) -> None:
    key = make_key()[0]
    store = SessionStore(db, cache_entries=10)
    sessions = [store.create(key, "2025-06-18", {}) for _ in range(30)]
    assert store.cached() == 10
    counter = TransactionCounter(db)
    assert store.get(sessions[-1].id) == sessions[-1]
    assert counter.count == 0  # recent ones are served from memory
    assert store.get(sessions[0].id) == sessions[0]
    assert counter.count == 1  # the evicted one is read again, and still valid
    assert store.cached() == 10


def test_abandoned_sessions_do_not_grow_the_cache_past_its_bound(db: Database, make_key: MakeKey) -> None:
    key = make_key()[0]
    store = SessionStore(db)
    first = store.create(key, "2025-06-18", {})
    with db.transaction() as cur:  # 5,000 abandoned sessions (past the 4,096 bound) made by some other worker
        cur.execute("INSERT INTO mcp_sessions (id, key_id, protocol_version)"
                    " SELECT 'abandoned-' || n, %s, '2025-06-18' FROM generate_series(1, 5000) n", (key,))
    for n in range(1, 5001):
        assert store.get(f"abandoned-{n}") is not None
    assert store.cached() == 4096
    assert store.get(first.id) == first


def test_expired_session_is_not_served_even_if_cached(db: Database, make_key: MakeKey) -> None:
    key = make_key()[0]
    store = SessionStore(db, idle_timeout=1.0)
    session = store.create(key, "2025-06-18", {})
    other = SessionStore(db, idle_timeout=1.0)  # a second worker
    assert other.get(session.id) == session
    with db.transaction() as cur:  # purged elsewhere, without a notification reaching us
        cur.execute("DELETE FROM mcp_sessions WHERE id = %s", (session.id,))
    time.sleep(1.0)  # past the cache lifetime (idle timeout minus two touch intervals)
    assert store.get(session.id) is None and other.get(session.id) is None
    assert store.cached() == 0


def test_idle_row_counts_as_expired_before_the_purge(db: Database, make_key: MakeKey) -> None:
    key = make_key()[0]
    store = SessionStore(db, idle_timeout=60.0)
    session = store.create(key, "2025-06-18", {})
    fresh = store.create(key, "2025-06-18", {})
    age(db, session.id, 61)
    store.forget()
    assert store.get(session.id) is None
    assert store.get(fresh.id) == fresh


def test_in_use_session_is_touched_often_enough_to_survive(db: Database, make_key: MakeKey) -> None:
    key = make_key()[0]
    store = SessionStore(db, idle_timeout=2.0)
    purger = SessionPurger(store, db)
    session = store.create(key, "2025-06-18", {})
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:  # used for two timeouts and more, purged in between
        assert store.get(session.id) == session
        purger.purge()
        time.sleep(0.05)
    time.sleep(2.3)
    assert purger.purge() == 1
    assert store.get(session.id) is None


def test_purge_deletes_only_idle_sessions_and_one_process_at_a_time(db: Database, make_key: MakeKey,
                                                                   database_url: str) -> None:
    key = make_key()[0]
    store = SessionStore(db, idle_timeout=3600.0)
    purger = SessionPurger(store, db)
    assert 1 <= purger.interval <= 900
    idle = [store.create(key, "2025-06-18", {}) for _ in range(3)]
    busy = store.create(key, "2025-06-18", {})
    for session in idle:
        age(db, session.id, 3601)
    holder = psycopg2.connect(database_url)
    try:
        with holder.cursor() as cur:  # another process is purging right now
            cur.execute("BEGIN; SELECT pg_advisory_xact_lock(%s)", (PURGE_LOCK,))
            assert purger.purge() is None
            holder.rollback()
    finally:
        holder.close()
    assert purger.purge() == 3
    assert purger.purge() == 0
    store.forget()
    assert [store.get(s.id) for s in idle] == [None] * 3
    assert store.get(busy.id) == busy


def test_client_capabilities_keep_only_what_can_be_relayed() -> None:
    declared = {"sampling": {"tools": {}}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True},
                "experimental": {"x": {}}, "tasks": {}}
    assert client_capabilities(declared) == {"sampling", "sampling.tools", "elicitation", "elicitation.form",
                                             "elicitation.url", "roots", "roots.listChanged"}
    assert client_capabilities({"sampling": True, "roots": None}) == frozenset()
    assert client_capabilities("sampling") == frozenset()


def test_delete_returns_once_every_listening_process_dropped_the_session(
        db: Database, database_url: str, make_key: MakeKey) -> None:
    """Item 5 of issue 11: the other process (its own pool, bus and listener) has the session
    cached; when delete() returns there, its cache no longer holds it, 20 times in a row."""
    key = make_key()[0]
    processes = []
    for _ in range(2):
        database = Database(database_url, 2)
        store = SessionStore(database)
        database.bus.subscribe(Topic.SESSIONS, store.on_change)
        listener = ChangeListener(database_url, database.bus, poll_seconds=0.5)
        listener.start()
        processes.append((database, store, listener))
    (_, ours, _), (_, theirs, _) = processes
    try:
        assert all(listener.listening.wait(10) for _, _, listener in processes)
        dropped = []
        for _ in range(20):
            session = ours.create(key, "2025-11-25", {})
            assert theirs.get(session.id) == session
            cached = theirs.cached()
            assert ours.delete(session.id)
            dropped.append(theirs.cached() == cached - 1)
        assert dropped == [True] * 20
    finally:
        for database, _, listener in processes:
            listener.stop()
            database.close()
