"""The change bus: delivery after commit in the writing process, once per change in every
process, nothing for a rollback, and guarded callbacks that leave the listener alive."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from metamcp import repository
from metamcp.db import Database
from metamcp.notify import ChangeBus, ChangeListener, Topic


def test_the_writer_hears_its_change_once_it_commits_and_never_for_a_rollback(database_url: str) -> None:
    db = Database(database_url, 2)
    heard: list[dict[str, Any]] = []
    db.bus.subscribe(Topic.SERVERS, heard.append)
    with db.transaction() as cur:
        repository.notify_change(cur, Topic.SERVERS, id=7)
        assert heard == []  # not before the commit
    assert heard == [{"topic": "servers", "id": 7}]
    with pytest.raises(RuntimeError):
        with db.transaction() as cur:
            repository.notify_change(cur, Topic.SERVERS, id=8)
            raise RuntimeError("rolled back")
    assert heard == [{"topic": "servers", "id": 7}]
    db.close()


def test_a_listener_skips_its_own_processs_changes_and_delivers_others(database_url: str) -> None:
    """Each change reaches each subscriber once: the writer's bus at commit, every other
    process's through its listener (here: a second Database stands for another process)."""
    ours, theirs = Database(database_url, 2), Database(database_url, 2)
    heard: list[dict[str, Any]] = []
    last = threading.Event()
    listener = ChangeListener(database_url, ours.bus, poll_seconds=0.5)

    def record(message: dict[str, Any]) -> None:
        if not message.get("resync"):
            heard.append(message)
            if message["server"] == "last":
                last.set()

    ours.bus.subscribe(Topic.LISTS, record)
    listener.start()
    try:
        assert listener.listening.wait(10)
        with ours.transaction() as cur:
            repository.notify_change(cur, Topic.LISTS, server="mine")
        with theirs.transaction() as cur:
            repository.notify_change(cur, Topic.LISTS, server="other")
        # NOTIFYs arrive in commit order: once "last" is heard, an echo of "mine" would have been.
        with theirs.transaction() as cur:
            repository.notify_change(cur, Topic.LISTS, server="last")
        assert last.wait(10), heard
    finally:
        listener.stop()
        ours.close()
        theirs.close()
    assert [m["server"] for m in heard] == ["mine", "other", "last"]


def test_a_raising_callback_is_logged_and_the_listener_lives_on(
        db: Database, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    bus = ChangeBus()
    listener = ChangeListener(database_url, bus, poll_seconds=0.5)
    heard: list[dict[str, Any]] = []
    done = threading.Event()

    def broken(_message: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")

    def good(message: dict[str, Any]) -> None:
        heard.append(message)
        if len([m for m in heard if not m.get("resync")]) == 2:
            done.set()

    bus.subscribe(Topic.CANCEL, broken)
    bus.subscribe(Topic.CANCEL, good)
    with caplog.at_level(logging.ERROR, logger="metamcp.notify"):
        listener.start()
        try:
            assert listener.listening.wait(10)
            for n in range(2):
                with db.transaction() as cur:
                    repository.notify_change(cur, Topic.CANCEL, n=n)
            assert done.wait(10), heard
            assert listener._thread is not None and listener._thread.is_alive()
        finally:
            listener.stop()
    assert [m.get("n") for m in heard if not m.get("resync")] == [0, 1]
    assert any("callback bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_malformed_payloads_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    bus = ChangeBus()
    heard: list[dict[str, Any]] = []
    bus.subscribe(Topic.KEYS, heard.append)
    with caplog.at_level(logging.WARNING, logger="metamcp.notify"):
        for payload in ("not json", "[1]", '{"no": "topic"}', '{"topic": 5}'):
            bus.receive(payload)
    assert heard == []
    assert len([r for r in caplog.records if "malformed" in r.message]) == 4
    bus.receive('{"topic": "keys", "origin": "elsewhere.1"}')
    assert heard == [{"topic": "keys"}]
