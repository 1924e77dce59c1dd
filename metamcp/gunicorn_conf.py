"""Gunicorn settings and hooks: how `make run` and the Docker image serve MetaMCP.

Reading this module only reads settings; it writes nothing. The master prepares everything
once when it starts, before forking workers (on_starting): secrets generated on the first run,
the shared limit tables, the embedded PostgreSQL started when no DATABASE_URL is set,
migrations applied. Workers inherit DATABASE_URL and build the app (metamcp.app.create_app).
The master supervises the embedded server (metamcp.embedded: restarted if it dies, shut down
if the master dies) and stops it on exit.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from gunicorn.workers import gthread

# Neither imports prometheus_client: its workers' import must see PROMETHEUS_MULTIPROC_DIR.
from metamcp import limits, logs, metrics
from metamcp.config import ConfigError, ensure_secrets, load_settings
from metamcp.db import EmbeddedPostgres, prepare_database
from metamcp.mcp.children import forget_dead_workers, reap_worker, run_dir
from metamcp.stopping import EXIT_WAIT, WorkerStop, exit_within


def _fail(error: Exception | str) -> None:
    print(f"metamcp: cannot start: {error}", file=sys.stderr, flush=True)
    sys.exit(1)


try:
    # Only what serving needs (address, workers, threads): the secrets may not exist yet.
    _settings = load_settings(require_secrets=False)
except (ConfigError, OSError) as _error:
    _fail(_error)

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "gthread"
# Sized for I/O-bound waiting: a long tool call or an open stream holds a thread while it
# waits (threads start on demand; see metamcp.mcp.capacity for the reserve kept for short
# requests). gthread accepts no more connections than worker_connections.
threads = _settings.threads
worker_connections = max(1000, 2 * _settings.threads)
# MCP calls may legitimately run for minutes; a stuck worker is still noticed through the
# heartbeat, which gthread workers send from their main loop independently of requests.
timeout = 120
# A bound, rarely reached: a worker answers its calls in flight and ends its streams within a
# second or two of SIGTERM (metamcp.stopping); past this, the master SIGKILLs it.
graceful_timeout = 5
# A stopping gthread worker keeps idle kept-alive connections open a while, so that a request a
# client is sending on one right then gets "Connection: close" rather than a reset. gunicorn
# keeps them 2 s, most of a 3 s stop; requests already on the wire arrive well within this.
STOP_KEEPALIVE_LINGER = 0.5
if hasattr(gthread, "STOP_KEEPALIVE_LINGER"):  # a module constant its worker reads at each use
    gthread.STOP_KEEPALIVE_LINGER = min(gthread.STOP_KEEPALIVE_LINGER, STOP_KEEPALIVE_LINGER)
keepalive = 75
wsgi_app = "metamcp.app:create_app()"
loglevel = _settings.log_level.lower()
proc_name = "metamcp"
# One control socket per user would be shared by every instance; none is needed.
control_socket_disable = True
# Every line, the master's and gunicorn's own included, in METAMCP_LOG_FORMAT (metamcp.logs).
# gunicorn's access log stays off: each worker writes its own access lines (logs.access_line).
logconfig_dict = logs.gunicorn_logconfig(_settings)
accesslog = None

_embedded: EmbeddedPostgres | None = None
#: prometheus_client's multiprocess directory, and whether this master made it (see on_starting).
_metrics_dir: Path | None = None
_metrics_dir_made = False


def port_in_use(host: str, port: int) -> bool:
    """Whether gunicorn's bind of host:port would fail because something listens there.

    Checked before anything starts: otherwise gunicorn retries its bind for 5 s and exits 2,
    after the embedded PostgreSQL was started. Bound the way gunicorn binds (SO_REUSEADDR, so a
    port in TIME_WAIT is free); other bind errors (a bad host) are left to gunicorn's message.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def on_starting(server: Any) -> None:
    global _embedded, _settings, _metrics_dir, _metrics_dir_made
    # A re-exec (USR2) or socket activation inherits its listening sockets: the port is ours;
    # with SO_REUSEPORT (reuse_port) sharing it is the point.
    shared = "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ or server.cfg.reuse_port
    if not shared and port_in_use(_settings.host, _settings.port):
        _fail(f"port {_settings.port} is in use (another gateway?); "
              "stop what listens there or set METAMCP_PORT")
    try:
        secrets_file = ensure_secrets()
        _settings = load_settings()
    except (ConfigError, OSError) as error:
        _fail(error)
    # Made before the workers fork, so their rate and in-flight limits are shared
    # (metamcp.limits). The master never takes the tables' lock itself (its SIGCHLD handling
    # must not block on it); the workers drop the counts of a dead worker.
    limits.create_shared()
    # The supervisor of the embedded server logs from this process.
    logs.configure(_settings)
    if secrets_file is not None:
        server.log.info("generated JWT_SECRET and ENCRYPTION_KEY into %s (first run; keep it private)",
                        secrets_file)
    if _settings.database_url is None:
        server.log.info("starting embedded PostgreSQL in %s", _settings.pgdata)
    try:
        url, _embedded = prepare_database(_settings, may_attach=False)
    except ConfigError as error:
        _fail(error)
    os.environ["DATABASE_URL"] = url
    if _settings.metrics:
        # Inherited by the workers, whose prometheus_client then writes its values there and
        # /metrics merges every worker's (metamcp.metrics).
        try:
            _metrics_dir, _metrics_dir_made = metrics.prepare_directory(_settings.metrics_dir)
        except OSError as error:
            where = error.filename or "a temporary directory"
            _fail(ConfigError("PROMETHEUS_MULTIPROC_DIR", f"cannot prepare {where}: {error.strerror}"))
        os.environ[metrics.MULTIPROC_ENV] = str(_metrics_dir)
    stale = forget_dead_workers(run_dir(_settings.data_dir))
    if stale:
        server.log.warning("forgot %s stdio child records of workers that no longer run", stale)
    where = f"embedded PostgreSQL in {_settings.pgdata}" if _embedded else "DATABASE_URL"
    server.log.info("database ready (%s); serving on http://%s:%s", where, _settings.host, _settings.port)


def _services(worker: Any) -> Any:
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get("metamcp")


def post_worker_init(worker: Any) -> None:
    """On SIGTERM (a graceful stop), the calls in flight get a short grace, then every request
    still open ends (metamcp.stopping), so gthread's wait for open connections is short. On
    SIGINT and SIGQUIT the worker exits at once (worker_int)."""
    def on_quit(signum: int, frame: Any) -> None:
        # gthread's own handler shuts its thread pool down first, which deadlocks when the
        # signal lands while the main thread is inside that pool's submit(), holding the pool's
        # lock (not reentrant); the worker then waited for its SIGKILL. The pool's threads end
        # with the process anyway: idle ones at once, busy ones within worker_exit's bound.
        worker.alive = False
        worker.cfg.worker_int(worker)
        sys.exit(0)

    signal.signal(signal.SIGINT, on_quit)
    signal.signal(signal.SIGQUIT, on_quit)
    services = _services(worker)
    if services is None:
        return
    worker.metamcp_stop = WorkerStop(services)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        worker.metamcp_stop.ask()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def worker_int(worker: Any) -> None:
    """Ctrl-C (SIGINT) or SIGQUIT: the worker exits now (gunicorn calls sys.exit after this).
    Its calls and streams end at once, so their threads finish and the process can end."""
    # Ctrl-C reaches the worker twice (from the terminal, then from the master): a second
    # SystemExit raised inside worker_exit would cut its cleanup short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    stop = getattr(worker, "metamcp_stop", None)
    if stop is not None:
        stop.ask(grace=0.0)
        stop.done.wait(1.0)


def worker_exit(server: Any, worker: Any) -> None:
    """Close this worker's upstream sessions and connections; the process ends within EXIT_WAIT
    seconds of this even if a thread is stuck in I/O that nothing interrupts."""
    if os.getpid() != worker.pid:
        return  # the master also calls this, for a worker found dead when it signalled it
    exit_within(EXIT_WAIT)
    services = _services(worker)
    if services is not None:
        services.close(wait=EXIT_WAIT / 2)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after any worker exit: drop its live gauges from /metrics; kill the process
    groups of stdio children it left (after a SIGKILL or a crash; a normal exit stopped them and
    removed their records)."""
    if _metrics_dir is not None:
        metrics.process_dead(worker.pid, _metrics_dir)
    killed = reap_worker(run_dir(_settings.data_dir), worker.pid)
    if killed:
        server.log.warning("worker %s left %s stdio process groups; killed them", worker.pid, killed)


def on_exit(server: Any) -> None:
    if _embedded is not None:
        _embedded.stop()
    if _metrics_dir is not None and _metrics_dir_made:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
