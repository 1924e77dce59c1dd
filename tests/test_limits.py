"""metamcp.limits: token buckets and in-flight counts, shared by forked processes."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from typing import Any

import pytest

from metamcp.app import create_app
from metamcp.authn import Principal
from metamcp.config import Settings
from metamcp.db import Database
from metamcp.limits import ADDRESSES, KEYS, LimitExceeded, Limits, Tables, address_id


def test_bucket_allows_a_burst_of_the_limit_then_says_when_to_retry() -> None:
    tables = Tables()
    assert all(tables.take(KEYS, 7, 60) == 0.0 for _ in range(60))
    wait = tables.take(KEYS, 7, 60)
    assert 0.0 < wait <= 1.0  # 60 a minute: one token a second
    assert tables.take(KEYS, 8, 60) == 0.0  # another key has its own bucket
    assert tables.take(ADDRESSES, 7, 60) == 0.0  # and addresses their own table


def test_peek_does_not_take() -> None:
    tables = Tables()
    for _ in range(5):
        assert tables.take(ADDRESSES, 1, 2, peek=True) == 0.0
    tables.take(ADDRESSES, 1, 2)
    tables.take(ADDRESSES, 1, 2)
    assert tables.take(ADDRESSES, 1, 2, peek=True) > 0.0


def test_limits_raise_429_with_retry_after_and_zero_is_off() -> None:
    limits = Limits(rate_limit=2, max_inflight=1, auth_failure_limit=1, tables=Tables())
    key = Principal(3, "k")
    limits.check_key(key)
    limits.check_key(key)
    with pytest.raises(LimitExceeded) as caught:
        limits.check_key(key)
    assert caught.value.status == 429 and caught.value.retry_after == 30
    limits.check_address("10.0.0.1")
    limits.auth_failed("10.0.0.1")
    with pytest.raises(LimitExceeded) as blocked:
        limits.check_address("10.0.0.1")
    assert blocked.value.retry_after == 60
    limits.check_address("10.0.0.2")
    ticket = limits.enter_call(3)
    with pytest.raises(LimitExceeded):
        limits.enter_call(3)
    ticket.release()
    ticket.release()  # idempotent: the count does not go below what is in flight
    assert limits.in_flight(3) == 0
    limits.enter_call(3).release()
    off = Limits(rate_limit=0, max_inflight=0, auth_failure_limit=0, tables=Tables())
    for _ in range(100):
        off.check_key(key)
        off.auth_failed("10.0.0.1")
        off.check_address("10.0.0.1")
        off.enter_call(3)


def test_many_ids_share_the_table_without_error() -> None:
    tables = Tables()
    for ident in range(1, 20000):  # more than the slots: least recently used records go
        assert tables.take(KEYS, ident, 10) == 0.0
    assert address_id("127.0.0.1") == address_id("127.0.0.1") != address_id("127.0.0.2")


def _enter_and_die(tables: Tables, count: int) -> None:
    for _ in range(count):
        assert tables.enter(5, 100)
    os._exit(0)  # like a SIGKILLed worker: nothing released


def _enter_and_wait(tables: Tables, count: int, entered: Any, leave: Any) -> None:
    for _ in range(count):
        assert tables.enter(5, 100)
    entered.set()
    leave.wait(30)
    os._exit(0)


def test_in_flight_counts_are_shared_across_fork_and_dropped_with_a_dead_worker() -> None:
    tables = Tables()
    assert tables.enter(5, 3)
    child = multiprocessing.get_context("fork").Process(target=_enter_and_die, args=(tables, 2))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    # At the cap, the counts of the dead process are dropped: only this process's call is left.
    assert tables.enter(5, 3)
    assert tables.in_flight(5) == 2
    context = multiprocessing.get_context("fork")
    entered, leave = context.Event(), context.Event()
    alive = context.Process(target=_enter_and_wait, args=(tables, 1, entered, leave))
    alive.start()
    try:
        assert entered.wait(30)
        assert tables.in_flight(5) == 3
        assert not tables.enter(5, 3)  # a live process's calls count
    finally:
        leave.set()
        alive.join(timeout=30)
    assert tables.enter(5, 3)  # that process has exited too: its call no longer counts
    assert tables.in_flight(5) == 3


@pytest.mark.parametrize("hops", [0, 1])
def test_failed_authentications_count_per_address_and_forwarded_for_only_when_trusted(
        settings: Settings, db: Database, hops: int) -> None:
    app = create_app(replace(settings, auth_failure_limit=2, forwarded_hops=hops), listen=False)
    try:
        client = app.test_client()

        def token(forwarded_for: str) -> int:
            return client.post("/api/v1/auth/token", json={"api_key": "mcp_" + "x" * 43},
                               headers={"X-Forwarded-For": forwarded_for}).status_code

        assert [token("6.6.6.6, 1.1.1.1"), token("7.7.7.7, 1.1.1.1")] == [401, 401]
        assert token("8.8.8.8, 1.1.1.1") == 429  # the proxy's entry (the last one) is the address
        # Another address: blocked too when X-Forwarded-For is not trusted (all are REMOTE_ADDR).
        assert token("1.1.1.1, 2.2.2.2") == (401 if hops else 429)
    finally:
        app.extensions["metamcp"].close()
