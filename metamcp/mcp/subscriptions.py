"""Resource subscriptions of downstream sessions: forwarded to the server that owns the URI
(Upstream.subscribe: `resources/subscribe` to a 2025 upstream, the `subscriptions/listen`
filter of a 2026-07-28 one), kept per session in PostgreSQL, and each `notifications/resources/updated`
delivered to the subscribed sessions' streams through their mailboxes (any worker).

Upstream clients are per process and shared by every session, so a process subscribes upstream
once per (server, URI), when it first takes a subscribe for it, and records itself as the
holder of each session's row it writes. An update is heard by every process subscribed
upstream; each delivers it to the sessions of its own rows, so each session gets it once.
Unsubscribing upstream: at once when a process's last row for (server, URI) goes through an
unsubscribe it takes itself; otherwise (the row removed by another worker, its session ended,
or moved to another holder) at the next update heard with nobody of its own left to tell.

2026-07-28 clients subscribe with `subscriptions/listen` instead: their streams are local
listeners of this process (listen(), no rows), counted per (server, URI) beside the rows and
served updates straight from the upstream client's notification.

Kept up: when the pool replaces a server's client, the holder subscribes again on the new one;
and every `subscription_check_seconds` each process adopts the rows of holders no longer
listening (a worker gone) and subscribes again where its client initialized a new upstream
session (the upstream restarted and forgot).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any
from uuid import UUID

import psycopg2.errors

from metamcp import repository
from metamcp.db import Database
from metamcp.errors import DatabaseUnavailable
from metamcp.mcp import jsonrpc
from metamcp.mcp.jsonrpc import INVALID_PARAMS, RpcError
from metamcp.mcp.mailbox import Mailbox
from metamcp.mcp.pool import Pool
from metamcp.mcp.router import Router
from metamcp.mcp.sessions import Session
from metamcp.mcp.upstream.call import UpstreamError
from metamcp.namespaces import NamespaceView

logger = logging.getLogger(__name__)

#: Subscriptions one session may hold at once.
MAX_PER_SESSION = 1000
UPDATED = "notifications/resources/updated"


class Subscriptions:
    """Subscribe, unsubscribe and update delivery of this process."""

    def __init__(self, db: Database, pool: Pool, router: Router, mailbox: Mailbox,
                 executor: Executor) -> None:
        self._db = db
        self._pool = pool
        self._router = router
        self._mailbox = mailbox
        #: Where updates are delivered, off the upstream client's reading thread.
        self._executor = executor
        #: (server, URI) this process's clients are subscribed to upstream, with the client's
        #: server_info then: a new one means a new upstream session, which knows nothing of it.
        self._upstream: dict[tuple[str, str], object] = {}
        #: The 2026-07-28 streams of this process listening to each (server, URI).
        self._local: dict[tuple[str, str], list[Callable[[dict[str, Any]], None]]] = {}
        #: Serializes this process's decisions to subscribe or unsubscribe upstream.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _holder(self) -> str:
        return self._db.bus.origin  # read at use: a forked worker has its own

    def subscribe(self, session: Session, uri: str, view: NamespaceView | None) -> dict[str, Any]:
        server = self._router.route_resource(uri, view)
        config = self._pool.config(server)
        if config is None:
            raise RpcError(INVALID_PARAMS, f"Unknown resource: {uri}")
        with self._lock:
            if not self._held((server, uri)):
                self._subscribe_upstream(server, uri)  # RpcError: the upstream's answer
            try:
                with self._db.transaction() as cur:
                    held = repository.subscribe_resource(cur, session.id, uri, config.id, self._holder)
                    if held > MAX_PER_SESSION:
                        raise RpcError(INVALID_PARAMS, f"Too many subscriptions: at most {MAX_PER_SESSION} "
                                                       "per session")
            except psycopg2.errors.ForeignKeyViolation:  # the server (or session) went meanwhile
                raise RpcError(INVALID_PARAMS, f"Unknown resource: {uri}") from None
        return {}

    def unsubscribe(self, session: Session, uri: str) -> dict[str, Any]:
        """Forget the session's subscription to `uri` (none: nothing to do)."""
        with self._lock:
            with self._db.transaction() as cur:
                row = repository.unsubscribe_resource(cur, session.id, uri)
            if row is not None and row["holder"] == self._holder:
                server = self._server_named(row["server_id"])
                if server is not None:
                    self._release(server, row["server_id"], uri)
        return {}

    def listen(self, uri: str, view: NamespaceView | None,
               deliver: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Have `deliver` called with the params of each `notifications/resources/updated` of
        `uri` (a stream of this process; nothing is written to the database), subscribing
        upstream if this process is not yet. Returns the release; RpcError when `uri` is no
        resource of the view or its server refuses."""
        server = self._router.route_resource(uri, view)
        key = (server, uri)
        with self._lock:
            if not self._held(key):
                self._subscribe_upstream(server, uri)  # RpcError: the upstream's answer
            self._local.setdefault(key, []).append(deliver)

        def release() -> None:
            with self._lock:
                listeners = self._local.get(key, [])
                if deliver in listeners:
                    listeners.remove(deliver)
                if listeners:
                    return
                self._local.pop(key, None)
                config = self._pool.config(server)
                if config is None:
                    return
                try:
                    self._release(server, config.id, uri)
                except DatabaseUnavailable:
                    pass  # cannot tell whether a session still wants it: the next update decides

        return release

    def on_notification(self, server: str, message: dict[str, Any]) -> None:
        """What a kept client heard: an update goes to its subscribers (on a pool thread)."""
        if message.get("method") == UPDATED:
            params = message.get("params")
            if isinstance(params, dict) and isinstance(params.get("uri"), str):
                self._executor.submit(self._updated, server, params)

    def on_drop(self, server: str) -> None:
        """The pool dropped `server`'s client (under its lock): subscribe again on the new one."""
        with self._lock:
            lost = [key for key in self._upstream if key[0] == server]
            for key in lost:
                del self._upstream[key]
        if lost:
            self._executor.submit(self._resubscribe, server)

    def maintain(self) -> None:
        """Adopt the rows of holders gone; subscribe again where a client's upstream session is
        new (forgetting what no row of this process wants any more)."""
        with self._db.transaction() as cur:
            adopted = repository.adopt_subscriptions(cur, self._holder)
        if adopted:
            logger.info("adopted %d resource subscriptions of a process gone", len(adopted))
        configs = self._pool.servers()
        names = {config.id: name for name, config in configs.items()}
        wanted = {(names[row["server_id"]], row["uri"]) for row in adopted if row["server_id"] in names}
        with self._lock:
            for key in [key for key in self._upstream if not self._held(key)]:
                config = configs.get(key[0])
                with self._db.transaction() as cur:
                    still = config is not None and (key in self._local or bool(
                        repository.resource_subscribers(cur, config.id, key[1], self._holder)))
                if still:
                    wanted.add(key)
                else:
                    del self._upstream[key]  # its upstream session is gone, and nobody here wants it
            for server, uri in sorted(key for key in wanted if not self._held(key)):
                try:
                    self._subscribe_upstream(server, uri)
                except RpcError as e:
                    self._upstream.pop((server, uri), None)
                    logger.warning("upstream %s: subscribing to a resource again failed (%s)", server, e.message)

    def start(self, interval: float) -> None:
        """Run maintain() every `interval` seconds on a thread of its own."""
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                        name="metamcp-subscriptions")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- internals -------------------------------------------------------------------------

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.maintain()
            except Exception as e:  # noqa: BLE001 - boundary: the thread must outlive an outage
                logger.warning("checking resource subscriptions failed (%s); retrying later", type(e).__name__)

    def _held(self, key: tuple[str, str]) -> bool:
        """Whether this process's client of the server is subscribed upstream, in its current session."""
        if key not in self._upstream:
            return False
        client = self._pool.kept(key[0])
        return client is not None and client.server_info is self._upstream[key]

    def _subscribe_upstream(self, server: str, uri: str) -> None:
        self._pool.subscribe(server, uri)  # resources/subscribe, or a 2026-07-28 listen filter
        client = self._pool.kept(server)
        self._upstream[(server, uri)] = None if client is None else client.server_info

    def _updated(self, server: str, params: dict[str, Any]) -> None:
        uri = params["uri"]
        config = self._pool.config(server)
        if config is None:
            return
        with self._lock:
            local = list(self._local.get((server, uri), []))
        for deliver in local:
            try:
                deliver(params)
            except Exception:  # noqa: BLE001 - boundary: one stream must not stop the others
                logger.exception("delivering a resource update failed")
        try:
            with self._db.transaction() as cur:
                sessions = repository.resource_subscribers(cur, config.id, uri, self._holder)
            if not sessions and not local:
                with self._lock:
                    self._release(server, config.id, uri)
                return
            notification = jsonrpc.notification(UPDATED, params)
            for session_id in sessions:
                self._mailbox.deliver(session_id, notification)
        except DatabaseUnavailable:
            logger.debug("an update of a subscribed resource was lost (database away)")

    def _release(self, server: str, server_id: UUID, uri: str) -> None:
        """Unsubscribe upstream when no row or stream of this process is left (holding the lock)."""
        if (server, uri) not in self._upstream or (server, uri) in self._local:
            return
        with self._db.transaction() as cur:
            if repository.resource_subscribers(cur, server_id, uri, self._holder):
                return
        del self._upstream[(server, uri)]
        client = self._pool.kept(server)
        if client is None:
            return
        try:
            client.unsubscribe(uri)
        except (RpcError, UpstreamError) as e:  # best effort: at worst it sends updates nobody gets
            logger.debug("upstream %s: unsubscribing failed (%s)", server, type(e).__name__)

    def _resubscribe(self, server: str) -> None:
        config = self._pool.config(server)
        if config is None:
            return  # inactive or removed: its rows stay (or go with it)
        try:
            with self._db.transaction() as cur:
                uris = set(repository.held_subscriptions(cur, config.id, self._holder))
            with self._lock:
                uris |= {uri for name, uri in self._local if name == server}
                for uri in sorted(uris):
                    self._subscribe_upstream(server, uri)
        except (RpcError, DatabaseUnavailable) as e:
            logger.warning("upstream %s: subscribing again failed (%s)", server, type(e).__name__)

    def _server_named(self, server_id: UUID) -> str | None:
        return next((name for name, config in self._pool.servers().items() if config.id == server_id), None)
