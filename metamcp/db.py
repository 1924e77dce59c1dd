"""PostgreSQL: migrations, the connection pool and transactions, and the one boundary where
"the database cannot be reached" becomes DatabaseUnavailable (503), logged once per outage."""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from metamcp import metrics
from metamcp.admin_data import load_script_environment, would_create
from metamcp.config import ConfigError, Settings, ensure_secrets, load_settings
from metamcp.embedded import EmbeddedError, EmbeddedPostgres
from metamcp.errors import DatabaseUnavailable, MetaMCPError
from metamcp.notify import ChangeBus

logger = logging.getLogger(__name__)


def _migrations_dir() -> Path:
    """The yoyo migrations (the top-level migrations/ folder): beside the package in a checkout
    or an editable install, else where a regular install put them (setup.cfg's data_files)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "migrations").is_dir():
        return checkout / "migrations"
    return Path(sys.prefix) / "share" / "metamcp" / "migrations"


MIGRATIONS_DIR = _migrations_dir()

psycopg2.extras.register_uuid()


def check_connection(url: str) -> None:
    """Connect once; raise ConfigError naming DATABASE_URL with the server's first line."""
    try:
        psycopg2.connect(url, connect_timeout=5).close()
    except psycopg2.Error as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("DATABASE_URL", f"cannot connect: {first_line}") from e


#: The PostgreSQL advisory lock every gateway process holds while it migrates ("mmcp").
MIGRATION_LOCK_KEY = 0x6D6D6370
#: Seconds a process waits for another one's migrations before it gives up.
MIGRATION_WAIT = 120.0


def migrate(url: str) -> int:
    """Apply pending yoyo migrations; returns how many were applied.

    Processes starting together (replicas, each gunicorn master) take turns on a PostgreSQL
    advisory lock, which belongs to a connection: unlike yoyo's lock (a row in yoyo_lock), it
    goes away with a process killed mid-migration. So, holding it, a yoyo lock row can only be
    left by such a process, and it is removed instead of failing every later start with
    "Process N has locked this database". yoyo's own lock is still taken inside, for yoyo's
    command line run by hand.
    """
    from yoyo import get_backend, read_migrations

    migrations = read_migrations(str(MIGRATIONS_DIR))
    with _migration_turn(url):
        backend = get_backend(_yoyo_url(url))
        try:
            stale = backend.execute("SELECT pid FROM yoyo_lock").fetchall()  # yoyo's lock table
            if stale:
                logger.warning("removing the migration lock left by process %s (it ended while "
                               "migrating)", ", ".join(str(row[0]) for row in stale))
                backend.break_lock()
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
        finally:
            backend.connection.close()
    return len(pending)


@contextmanager
def _migration_turn(url: str) -> Iterator[None]:
    """Hold MIGRATION_LOCK_KEY for the block, waiting at most MIGRATION_WAIT seconds for it."""
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        deadline = time.monotonic() + MIGRATION_WAIT
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
                row = cur.fetchone()
                if row is not None and row[0]:
                    break
                if time.monotonic() > deadline:
                    raise ConfigError("DATABASE_URL", f"another process has been migrating this "
                                                      f"database for over {MIGRATION_WAIT:g} s")
                time.sleep(0.2)
        yield  # closing the connection below releases the lock
    finally:
        conn.close()


@functools.cache
def migration_ids() -> tuple[str, ...]:
    """Ids of the migrations in migrations/, as yoyo names them (the file name without .sql)."""
    from yoyo import read_migrations

    return tuple(migration.id for migration in read_migrations(str(MIGRATIONS_DIR)))


def _yoyo_url(url: str) -> str:
    # yoyo only understands postgresql://; psycopg2 takes postgres:// as well.
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://") :]
    return url


def prepare_database(settings: Settings, may_attach: bool = True) -> tuple[str, EmbeddedPostgres | None]:
    """Make the database usable: start the embedded one if configured, check, migrate.

    Returns the URL to use and the embedded server (to stop later), if one was started.
    `may_attach=False` (the gateway) refuses an embedded server another live process owns.
    """
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.pgdata)
        try:
            url = embedded.start(may_attach)
        except EmbeddedError as e:
            raise ConfigError("METAMCP_DATA_DIR", str(e)) from e
        except Exception as e:  # noqa: BLE001 - the library raises many kinds; one clear line
            raise ConfigError(
                "METAMCP_DATA_DIR", f"cannot start embedded PostgreSQL in {settings.pgdata}: {e}"
            ) from e
    check_connection(url)
    migrate(url)
    return url, embedded


def is_connection_failure(error: psycopg2.Error, conn: psycopg2.extensions.connection | None = None) -> bool:
    """Whether `error` means the server is gone (not a bad statement on a live connection)."""
    if isinstance(error, psycopg2.InterfaceError):
        return True
    if not isinstance(error, psycopg2.OperationalError):
        return False
    code = error.pgcode or ""
    # No SQLSTATE: libpq's own (connect refused, server closed the connection); class 08:
    # connection exceptions; 57P01-03: the server is shutting down or starting.
    return (not code or code.startswith("08") or code in ("57P01", "57P02", "57P03")
            or (conn is not None and conn.closed != 0))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Availability:
    """Whether PostgreSQL answers, as this process last saw it: one log line when an outage
    starts and one when it ends, and while it lasts at most one connection attempt per
    PROBE_INTERVAL (the rest fail fast instead of each waiting on a dead server)."""

    #: Seconds between connection attempts while the database is down.
    PROBE_INTERVAL = 0.5

    def __init__(self, on_down: Callable[[], None] | None = None) -> None:
        self.down_since: float | None = None
        self._next_probe = 0.0
        self._on_down = on_down
        self._lock = threading.Lock()

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def may_try(self) -> bool:
        if self.down_since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.PROBE_INTERVAL
            return True

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._next_probe = time.monotonic() + self.PROBE_INTERVAL
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        logger.warning("database unreachable (%s); serving from caches, answering 503 where the "
                       "database is needed", first_line(error))
        if self._on_down is not None:
            self._on_down()

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            logger.warning("database reachable again after %.1f s", time.monotonic() - since)


class _Pool:
    """Connections kept for reuse, at most `size` open; a checkout waits for a free one.

    reset() closes the idle ones and marks those in use to be closed when returned: after a
    server restart every pooled connection is dead, and each would otherwise fail a request.
    """

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._size = size
        self._idle: list[psycopg2.extensions.connection] = []
        self._open = 0
        self._generation = 0
        self._born: dict[int, int] = {}  # id(conn) -> generation
        self._cond = threading.Condition()

    def stats(self) -> dict[str, int]:
        with self._cond:
            idle = len(self._idle)
            return {"max": self._size, "in_use": self._open - idle, "idle": idle}

    def get(self, timeout: float) -> psycopg2.extensions.connection:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._idle:
                    conn = self._idle.pop()
                    if _alive(conn):
                        return conn
                    self._discard(conn)
                    self._reset_locked()  # one dead means the server restarted: all are
                if self._open < self._size:
                    self._open += 1
                    generation = self._generation
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailable("The database is busy (no free connection); retry shortly.")
                self._cond.wait(left)
        try:
            conn = psycopg2.connect(self._url, connect_timeout=5)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._born[id(conn)] = generation
        return conn

    def put(self, conn: psycopg2.extensions.connection, close: bool) -> None:
        with self._cond:
            if close or conn.closed or self._born.get(id(conn)) != self._generation:
                self._discard(conn)
            else:
                self._idle.append(conn)
            self._cond.notify()

    def reset(self) -> None:
        with self._cond:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    def _discard(self, conn: psycopg2.extensions.connection) -> None:
        self._born.pop(id(conn), None)
        self._open -= 1
        try:
            conn.close()
        except psycopg2.Error:
            pass

    def close(self) -> None:
        with self._cond:
            self._reset_locked()


def _alive(conn: psycopg2.extensions.connection) -> bool:
    """An idle connection has nothing to read; if it does, the server said goodbye (or
    closed it): a zero-timeout poll costs one system call, no round trip."""
    if conn.closed:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg2.Error):
        return False
    return not readable


class Cursor(psycopg2.extras.RealDictCursor):
    """A transaction's cursor (rows as dicts). It collects the changes published in the
    transaction (repository.notify_change), which this process delivers once it commits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.published: list[dict[str, Any]] = []
        #: The publishing process, stamped on each NOTIFY (see ChangeBus.origin).
        self.origin = ""
        #: Who admin changes outside a request are recorded as (metamcp.audit_changes); None: off.
        self.audit_actor: str | None = "system"


class Database:
    """A thread-safe connection pool for one process (one per gunicorn worker), and its
    change bus.

    Connections are opened on demand, so a worker starts while PostgreSQL is away.
    """

    #: Seconds a transaction waits for a free pooled connection before answering 503.
    CHECKOUT_TIMEOUT = 10.0

    def __init__(self, url: str, max_connections: int, bus: ChangeBus | None = None) -> None:
        self.url = url
        #: Where committed changes are delivered in this process (see metamcp.notify).
        self.bus = bus or ChangeBus()
        self._pool = _Pool(url, max_connections)
        self.availability = Availability(on_down=self._pool.reset)
        #: Who admin changes made outside a request are recorded as (metamcp.audit_changes):
        #: "system", "cli" for the admin scripts; None when METAMCP_AUDIT is off.
        self.audit_actor: str | None = "system"

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A cursor inside one transaction: committed on success, rolled back on error. The
        changes it published reach this process's bus after the commit.

        Raises DatabaseUnavailable when the server cannot be reached, before or during it.
        """
        conn = self._checkout()
        metrics.db_checked_out()
        started = time.perf_counter()
        broken = False
        published: list[dict[str, Any]] = []
        try:
            with conn:  # commits or rolls back
                with conn.cursor(cursor_factory=Cursor) as cur:
                    cur.origin, published = self.bus.origin, cur.published
                    cur.audit_actor = self.audit_actor
                    yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            if not is_connection_failure(e, conn):
                raise
            broken = True
            self.availability.failed(e)
            raise DatabaseUnavailable() from None
        finally:
            self._pool.put(conn, close=broken or conn.closed != 0)
            metrics.db_returned(time.perf_counter() - started)
        self.availability.succeeded()
        self.bus.deliver(published)

    def _checkout(self) -> psycopg2.extensions.connection:
        if not self.availability.may_try():
            raise DatabaseUnavailable()
        try:
            return self._pool.get(self.CHECKOUT_TIMEOUT)
        except psycopg2.Error as e:
            self.availability.failed(e)
            raise DatabaseUnavailable() from None

    def report(self, error: BaseException | None) -> None:
        """What another connection of this process saw (the change listener's)."""
        if error is None:
            self.availability.succeeded()
        else:
            self.availability.failed(error)

    def ping(self) -> bool:
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() is not None
        except (DatabaseUnavailable, psycopg2.Error):
            return False

    def stats(self) -> dict[str, int]:
        """The pool's size and use, for the admin health view."""
        return self._pool.stats()

    def close(self) -> None:
        self._pool.close()


class CliError(Exception):
    """An admin script's failure, reported as one line on stderr with exit status 1."""


class NoProjectData(CliError):
    """The admin script would create a new embedded database or secrets, and --init was not given."""


@contextmanager
def open_database(root: Path | None = None, *, init: bool = False) -> Iterator[tuple[Database, Settings]]:
    """For the admin scripts: the database `make run` uses, started for the command if needed.

    `root` (the project root holding scripts/) anchors `.env` and the default data directory
    (metamcp.admin_data), so a script run from another folder reaches the same data. Without
    DATABASE_URL and without an initialized data directory it refuses (NoProjectData) rather
    than creating an empty database and secrets, unless `init`. Stops an embedded server only
    if this command started it.
    """
    values = load_script_environment(root, os.environ) if root is not None else None
    if values is not None and not init:
        missing = would_create(values)
        if missing:
            raise NoProjectData(f"no MetaMCP data found; this would create {' and '.join(missing)}. "
                                "Start the gateway once with `make run` in this checkout, set "
                                "METAMCP_DATA_DIR or DATABASE_URL, or pass --init to create them")
    ensure_secrets(values, read_dotenv=values is None)
    settings = load_settings(values, read_dotenv=values is None)
    url, embedded = prepare_database(settings)
    db = Database(url, 2)
    db.audit_actor = "cli" if settings.audit else None
    try:
        yield db, settings
    finally:
        db.close()
        if embedded is not None:
            embedded.stop()


def run_admin_command(prog: str, root: Path, command: Callable[[Database, Settings], None],
                      *, init: bool = False) -> int:
    """Run an admin script's command on the database (open_database) and turn the failures it
    expects into one line on stderr: exit status 0 on success, 1 on failure."""
    try:
        with open_database(root, init=init) as (db, settings):
            command(db, settings)
    except (CliError, ConfigError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except MetaMCPError as e:
        details = f": {json.dumps(e.details)}" if e.details else ""
        print(f"{prog}: {e.message}{details}", file=sys.stderr)
        return 1
    except psycopg2.Error as e:
        print(f"{prog}: database error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0
