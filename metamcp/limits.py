"""Per-key request rates, per-key in-flight tool calls and per-address authentication failures.

The state lives in memory shared by the workers of one gunicorn master: an anonymous shared
mapping made by the master before it forks (`create_shared`), so a limit holds across the
workers without a database query on the hot path. A process that was not forked from such a
master (tests, scripts) gets private tables. Replicas do not share: each replica enforces the
full limits on its own.

Records are found by integer id (a key id, or a hash of a client address) with open addressing
over a fixed table; a full neighbourhood evicts the record touched least recently. An fcntl
lock guards the tables across processes (the kernel drops it if a worker dies holding it) and a
thread lock across the threads of one process. In-flight counts are kept per worker row, so the
counts of a worker that died (even by SIGKILL) are dropped by zeroing its row: a key at its cap
first reaps the rows of dead processes, and a new worker may take such a row over.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from metamcp import metrics
from metamcp.errors import MetaMCPError

if TYPE_CHECKING:
    from metamcp.authn import Principal

logger = logging.getLogger(__name__)

#: Records per table; ids beyond it share neighbourhoods and evict the least recently used.
SLOTS = 4096
#: Records looked at from an id's home slot before evicting.
PROBES = 8
#: Worker rows of the in-flight table (gunicorn workers, including ones added by TTIN).
ROWS = 128
_BUCKET = struct.Struct("=qdd")  # id, tokens, updated (CLOCK_MONOTONIC is system-wide)
_OWNER = struct.Struct("=q")  # pid owning a row of in-flight counts, 0: free
_COUNT = struct.Struct("=i")


class LimitExceeded(MetaMCPError):
    """Over a limit: the caller should retry after `retry_after` seconds (at least 1)."""

    status, code = 429, "too_many_requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class _Shared:
    """Shared memory and its lock; an anonymous mapping survives fork as shared pages."""

    def __init__(self, size: int) -> None:
        self.mem = mmap.mmap(-1, size)
        self._fd = os.memfd_create("metamcp-limits", os.MFD_CLOEXEC)
        self._threads = threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield self.mem
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)


class Tables:
    """Token buckets of keys and of addresses, and in-flight counts of keys."""

    def __init__(self) -> None:
        self._bucket_bytes = SLOTS * _BUCKET.size
        self._owners_at = 2 * self._bucket_bytes
        self._counts_at = self._owners_at + ROWS * _OWNER.size
        self._record = 8 + ROWS * _COUNT.size  # id, then one count per worker row
        self._shared = _Shared(self._counts_at + SLOTS * self._record)
        self._row: int | None = None
        self._row_pid = 0

    # --- token buckets -------------------------------------------------------------------

    def take(self, table: int, ident: int, per_minute: int, peek: bool = False) -> float:
        """Take a token from bucket `ident` (capacity `per_minute`, refilled evenly over a
        minute); 0.0 when taken, else the seconds until one is there. `peek`: only look."""
        rate = per_minute / 60.0
        base = table * self._bucket_bytes
        now = time.monotonic()
        with self._shared.locked() as mem:
            at = self._find(mem, base, _BUCKET.size, ident, lambda a: _BUCKET.unpack_from(mem, a)[2])
            found, tokens, updated = _BUCKET.unpack_from(mem, at)
            if found != ident:
                tokens, updated = float(per_minute), now
            tokens = min(float(per_minute), tokens + max(0.0, now - updated) * rate)
            if tokens >= 1.0:
                if not peek:
                    tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / rate
            _BUCKET.pack_into(mem, at, ident, tokens, now)
        return wait

    # --- in-flight counts ----------------------------------------------------------------

    def enter(self, ident: int, cap: int) -> bool:
        """Count one more call of `ident` unless `cap` are in flight across the workers (at the
        cap, the counts of processes that died are dropped first)."""
        return self._enter(ident, cap) or (self.reap_dead() > 0 and self._enter(ident, cap))

    def _enter(self, ident: int, cap: int) -> bool:
        row = self._my_row()
        with self._shared.locked() as mem:
            at = self._find(mem, self._counts_at, self._record, ident, lambda a: self._total(mem, a))
            if _OWNER.unpack_from(mem, at)[0] != ident:
                mem[at:at + self._record] = bytes(self._record)
                _OWNER.pack_into(mem, at, ident)
            if self._total(mem, at) >= cap:
                return False
            slot = at + 8 + row * _COUNT.size
            _COUNT.pack_into(mem, slot, _COUNT.unpack_from(mem, slot)[0] + 1)
            return True

    def leave(self, ident: int) -> None:
        row = self._my_row()
        with self._shared.locked() as mem:
            for at in self._probe(self._counts_at, self._record, ident):
                if _OWNER.unpack_from(mem, at)[0] == ident:
                    slot = at + 8 + row * _COUNT.size
                    _COUNT.pack_into(mem, slot, max(0, _COUNT.unpack_from(mem, slot)[0] - 1))
                    return

    def in_flight(self, ident: int) -> int:
        with self._shared.locked() as mem:
            for at in self._probe(self._counts_at, self._record, ident):
                if _OWNER.unpack_from(mem, at)[0] == ident:
                    return self._total(mem, at)
        return 0

    def reap_dead(self) -> int:
        """Drop the in-flight counts of processes that exited (a worker SIGKILLed mid-call);
        returns how many rows were freed."""
        freed = 0
        with self._shared.locked() as mem:
            for row in range(ROWS):
                owner = _OWNER.unpack_from(mem, self._owners_at + row * _OWNER.size)[0]
                if owner != 0 and not _alive(owner):
                    self._clear_row(mem, row)
                    freed += 1
        return freed

    def _my_row(self) -> int:
        """This process's row, claimed on first use: a free one, or one of a dead process."""
        pid = os.getpid()
        if self._row is not None and self._row_pid == pid:
            return self._row
        with self._shared.locked() as mem:
            for row in range(ROWS):
                owner = _OWNER.unpack_from(mem, self._owners_at + row * _OWNER.size)[0]
                if owner == 0 or owner == pid or not _alive(owner):
                    self._clear_row(mem, row)
                    _OWNER.pack_into(mem, self._owners_at + row * _OWNER.size, pid)
                    self._row, self._row_pid = row, pid
                    return row
        raise RuntimeError(f"more than {ROWS} processes share the limit tables")

    def _clear_row(self, mem: mmap.mmap, row: int) -> None:
        _OWNER.pack_into(mem, self._owners_at + row * _OWNER.size, 0)
        for slot in range(SLOTS):
            _COUNT.pack_into(mem, self._counts_at + slot * self._record + 8 + row * _COUNT.size, 0)

    def _total(self, mem: mmap.mmap, at: int) -> int:
        return sum(struct.unpack_from(f"={ROWS}i", mem, at + 8))

    # --- slots ---------------------------------------------------------------------------

    @staticmethod
    def _probe(base: int, size: int, ident: int) -> Iterator[int]:
        home = ident % SLOTS
        for step in range(PROBES):
            yield base + ((home + step) % SLOTS) * size

    def _find(self, mem: mmap.mmap, base: int, size: int, ident: int, age: Callable[[int], float]) -> int:
        """The record of `ident`, else a free one, else the one `age` ranks oldest."""
        free = None
        candidates = list(self._probe(base, size, ident))
        for at in candidates:
            owner = _OWNER.unpack_from(mem, at)[0]
            if owner == ident:
                return at
            if owner == 0 and free is None:
                free = at
        if free is not None:
            return free
        return min(candidates, key=age)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


KEYS, ADDRESSES = 0, 1
_shared_tables: Tables | None = None


def create_shared() -> Tables:
    """Made by the gunicorn master before it forks, so every worker shares the tables."""
    global _shared_tables
    _shared_tables = Tables()
    return _shared_tables


def address_id(address: str) -> int:
    """A stable non-zero integer for a client address."""
    value = int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big") >> 1
    return value or 1


class Limits:
    """The checks the routes run; a limit of 0 turns that check off."""

    def __init__(self, rate_limit: int, max_inflight: int, auth_failure_limit: int,
                 tables: Tables | None = None) -> None:
        self.rate_limit = rate_limit
        self.max_inflight = max_inflight
        self.auth_failure_limit = auth_failure_limit
        self._tables = tables or _shared_tables or Tables()

    def check_key(self, principal: Principal) -> None:
        """One authenticated request: the key's rate, a 429 LimitExceeded past it."""
        per_minute = principal.rate_limit or self.rate_limit  # the key's own rate, else the default
        self.check_rate(principal.key_id, per_minute)

    def check_rate(self, key_id: int, per_minute: int) -> None:
        """One request of a key; raises LimitExceeded past `per_minute` (0: unlimited)."""
        if per_minute <= 0:
            return
        wait = self._tables.take(KEYS, key_id, per_minute)
        if wait:
            metrics.limit_rejected(metrics.RATE)
            raise LimitExceeded(f"Too many requests: this key may make {per_minute} requests a minute",
                                wait)

    def check_address(self, address: str) -> None:
        """Before a credential is checked: refused while the address has failed too often."""
        if self.auth_failure_limit <= 0:
            return
        wait = self._tables.take(ADDRESSES, address_id(address), self.auth_failure_limit, peek=True)
        if wait:
            metrics.limit_rejected(metrics.AUTH_FAILURES)
            raise LimitExceeded("Too many failed authentication attempts from this address", wait)

    def auth_failed(self, address: str) -> None:
        if self.auth_failure_limit > 0:
            self._tables.take(ADDRESSES, address_id(address), self.auth_failure_limit)

    def enter_call(self, key_id: int | None) -> Ticket:
        """Count a tool call of a key in flight; raises LimitExceeded at the cap."""
        if key_id is None or self.max_inflight <= 0:
            return Ticket(None, None)
        if not self._tables.enter(key_id, self.max_inflight):
            metrics.limit_rejected(metrics.IN_FLIGHT)
            raise LimitExceeded(f"Too many requests: this key may have {self.max_inflight} tool calls "
                                "in flight", 1)
        return Ticket(self._tables, key_id)

    def in_flight(self, key_id: int) -> int:
        return self._tables.in_flight(key_id)


class Ticket:
    """One counted call; release() once it ends (idempotent)."""

    def __init__(self, tables: Tables | None, key_id: int | None) -> None:
        self._tables = tables
        self._key_id = key_id
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            tables, self._tables = self._tables, None
        if tables is not None and self._key_id is not None:
            tables.leave(self._key_id)
