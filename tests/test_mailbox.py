"""Session mailboxes on a real PostgreSQL: a stream held here gets messages at once, one held by
another process through the database and its listener; messages nobody takes expire; the
messages of a deleted session go with it."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import pytest

from metamcp import repository
from metamcp.db import Database
from metamcp.mcp.mailbox import Mailbox
from metamcp.notify import ChangeListener, Topic

MESSAGE = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://x"}}


@pytest.fixture
def session(db: Database, make_key: Callable[..., tuple[int, str]]) -> Iterator[str]:
    key_id, _ = make_key()
    with db.transaction() as cur:
        repository.insert_session(cur, "s1", key_id, "2025-11-25", {}, None)
    yield "s1"


def stored(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM sse_outbox")
        row = cur.fetchone()
        return int(row["n"]) if row else 0


def test_a_stream_held_here_gets_the_message_without_the_database(db: Database, session: str) -> None:
    mailbox = Mailbox(db)
    inbox = mailbox.open(session)
    mailbox.deliver(session, MESSAGE)
    assert inbox.get(timeout=1) == MESSAGE
    assert stored(db) == 0


def test_a_stream_held_by_another_process_gets_it_through_the_database(
        db: Database, database_url: str, session: str) -> None:
    """`theirs` stands for the process holding the stream, with its own listener."""
    theirs_db = Database(database_url, 2)
    theirs = Mailbox(theirs_db)
    theirs_db.bus.subscribe(Topic.MAILBOX, theirs.on_notify)
    listener = ChangeListener(database_url, theirs_db.bus, poll_seconds=0.5)
    listener.start()
    try:
        assert listener.listening.wait(10)
        inbox = theirs.open(session)
        Mailbox(db).deliver(session, MESSAGE)  # this process holds no stream of it
        assert inbox.get(timeout=5) == MESSAGE
        assert stored(db) == 0  # taken
    finally:
        listener.stop()
        theirs_db.close()


def test_messages_wait_a_while_for_a_stream_then_expire(db: Database, session: str) -> None:
    mailbox = Mailbox(db, ttl=30)
    mailbox.deliver(session, MESSAGE)  # no stream anywhere: stored
    early = mailbox.open(session)
    assert early.get(timeout=1) == MESSAGE  # a stream opened soon gets it
    mailbox.close(session, early)
    short = Mailbox(db, ttl=0.01)
    short.deliver(session, {**MESSAGE, "params": {"uri": "stale"}})
    with db.transaction() as cur:
        cur.execute("UPDATE sse_outbox SET created_at = now() - interval '1 second'")
    inbox = short.open(session)
    with pytest.raises(queue.Empty):
        inbox.get(timeout=0.2)  # too old: dropped, not handed out
    assert stored(db) == 0
    short.close(session, inbox)
    short.deliver(session, MESSAGE)
    with db.transaction() as cur:
        cur.execute("UPDATE sse_outbox SET created_at = now() - interval '1 second'")
    assert short.purge() == 1
    assert stored(db) == 0


def test_a_deleted_sessions_messages_go_with_it(db: Database, session: str) -> None:
    Mailbox(db).deliver(session, MESSAGE)
    assert stored(db) == 1
    with db.transaction() as cur:
        repository.delete_session(cur, session)
    assert stored(db) == 0
    Mailbox(db).deliver(session, MESSAGE)  # to nobody, quietly
    Mailbox(db).deliver("never-was", MESSAGE)
    assert stored(db) == 0


def test_the_newest_stream_of_a_session_gets_the_message(db: Database, session: str) -> None:
    mailbox = Mailbox(db)
    older, newer = mailbox.open(session), mailbox.open(session)
    mailbox.deliver(session, MESSAGE)
    assert newer.get(timeout=1) == MESSAGE
    assert older.empty()
    mailbox.close(session, newer)
    mailbox.deliver(session, MESSAGE)
    assert older.get(timeout=1) == MESSAGE
    mailbox.close(session, older)
    assert not mailbox.holds(session)
