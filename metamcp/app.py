"""create_app(): settings, database pool, caches, blueprints and error handlers."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import psycopg2
from flask import Flask, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from metamcp import audit, json_depth, logs, metrics, observe, repository
from metamcp.api import audit as audit_api
from metamcp.api import auth as auth_api
from metamcp.api import endpoints as endpoints_api
from metamcp.api import health as health_api
from metamcp.api import keys as keys_api
from metamcp.api import metrics as metrics_api
from metamcp.api import namespaces as namespaces_api
from metamcp.api import servers as servers_api
from metamcp.api import swagger_ui
from metamcp.api.auth import client_address
from metamcp.api.errors import http_exception_response, register_error_handlers
from metamcp.api.schemas import ErrorSchema
from metamcp.audit import AuditLog
from metamcp.authn import Authenticator
from metamcp.config import ConfigError, Settings, ensure_secrets, load_settings, package_version
from metamcp.crypto import SecretBox
from metamcp.db import Database, first_line, migrate
from metamcp.endpoints import EndpointRegistry
from metamcp.errors import McpHttpError, MetaMCPError, ValidationFailed
from metamcp.limits import Limits
from metamcp.mcp import legacy_sse, tool_api, transport
from metamcp.mcp.capacity import Admission
from metamcp.mcp.dispatcher import Dispatcher
from metamcp.mcp.gateway import Gateway
from metamcp.mcp.jsonrpc import INVALID_REQUEST
from metamcp.mcp.mailbox import Mailbox
from metamcp.mcp.mrtr import Mrtr
from metamcp.mcp.protocol import JSON_TYPE
from metamcp.mcp.relay import Relay
from metamcp.mcp.sessions import SessionPurger, SessionStore
from metamcp.mcp.streams import Streams
from metamcp.mcp.subscriptions import Subscriptions
from metamcp.namespaces import NamespaceRegistry
from metamcp.notify import Callback, ChangeListener, Topic
from metamcp.readiness import Readiness
from metamcp.request_body import read_body, read_json
from metamcp.servers import ServerRegistry
from metamcp.stdio_policy import StdioPolicy

logger = logging.getLogger(__name__)

#: Methods whose body the REST API reads as JSON.
BODY_METHODS = {"POST", "PUT", "PATCH"}


@dataclass
class Services:
    """What the views reach through `current_app.extensions["metamcp"]`."""

    settings: Settings
    db: Database
    authenticator: Authenticator
    servers: ServerRegistry
    sessions: SessionStore
    gateway: Gateway
    dispatcher: Dispatcher
    streams: Streams
    namespaces: NamespaceRegistry
    endpoints: EndpointRegistry
    sse: legacy_sse.SseHub
    mailbox: Mailbox
    listener: ChangeListener | None
    readiness: Readiness
    limits: Limits
    admission: Admission
    observers: observe.Observers
    purger: SessionPurger | None = None
    subscriptions: Subscriptions | None = None
    audit: AuditLog | None = None

    def stop(self, grace: float = 0.0) -> None:
        """Begin to stop (the worker got SIGTERM or SIGINT), so the requests in flight end:
        upstream calls still in flight after `grace` seconds (at once when none is) are answered
        that the gateway is stopping, then the standing streams end. Idempotent."""
        self.gateway.pool.stop(grace)
        self.streams.stop()

    def close(self, wait: float = 10.0) -> None:
        """Release what this process holds: the listener, upstream sessions, connections.
        Upstream clients get at most `wait` seconds to close (see Pool.close)."""
        self.stop()
        if self.audit is not None:
            self.audit.stop()  # writes what is queued (bounded)
        if self.purger is not None:
            self.purger.stop()
        if self.subscriptions is not None:
            self.subscriptions.stop()
        if self.listener is not None:
            self.listener.stop()
        self.sse.close()
        self.gateway.close(wait)
        self.db.close()


class MetaMCPApi(Api):
    """flask-smorest's Api, answering errors in the project's JSON error format."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Response:
        if error.code == 405 and transport.MCP_PATH.fullmatch(request.path):
            # A method an MCP route does not serve: a JSON-RPC error, with Allow as on REST.
            response = transport.mcp_error(McpHttpError(405, INVALID_REQUEST, "Method Not Allowed"))
            for name, value in error.get_headers():
                if name.lower() != "content-type":
                    response.headers[name] = value
            return response
        return http_exception_response(error)


class UntrustedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, parsing with the nesting-depth limit (request.get_json and friends)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return json_depth.loads(s)


class UnsupportedMediaType(MetaMCPError):
    status, code = 415, "unsupported_media_type"


def check_json_body() -> None:
    """Content-Type, size and syntax of a REST request body, before any view runs."""
    if request.method not in BODY_METHODS or not request.path.startswith("/api/"):
        return
    has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get(
        "Transfer-Encoding", ""
    )
    if not has_body:
        return
    if request.mimetype != JSON_TYPE:
        raise UnsupportedMediaType("Send the body as JSON with 'Content-Type: application/json'.")
    # Size, framing, syntax and depth; webargs parses the same bytes again, known to be safe.
    value = read_json()
    if b"\\u0000" in read_body() and _holds_nul(value):
        raise ValidationFailed("Text must not contain NUL characters (\\u0000); the database cannot store them.")


def _holds_nul(value: Any) -> bool:
    """Whether a parsed body has a NUL in any string (key or value); iterative, depth is bounded."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\0" in item:
                return True
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


REQUEST_ID_HEADER = "X-Request-Id"


def begin_observation() -> None:
    """The request's record (metamcp.observe), current for the views below."""
    observe.begin(observe.Observation(
        observe.request_id(request.headers.get(REQUEST_ID_HEADER)), request.method,
        request.url_rule.rule if request.url_rule is not None else "unmatched", request.path,
        client_address()))


def end_observation(response: Response) -> Response:
    """Echo the request's id; hand its record to the sinks once the response is sent in full
    (for a stream, when it ends), counting the bytes sent."""
    observation = observe.current()
    observe.begin(None)
    if observation is None:
        return response
    observation.status = response.status_code
    response.headers[REQUEST_ID_HEADER] = observation.request_id
    if response.is_streamed:
        response.response = CountedBody(response.response, observation)
    else:
        observation.bytes_out = response.content_length or 0
    services: Services = current_app.extensions["metamcp"]
    response.call_on_close(lambda: services.observers.finish(observation))
    return response


class CountedBody:
    """A streamed body that counts the bytes it yields into the request's record; close()
    reaches the body's own (which ends an upstream call, a standing stream)."""

    def __init__(self, body: Any, observation: observe.Observation) -> None:
        self._body = body
        self._observation = observation

    def __iter__(self) -> Any:
        logs.streaming(self._observation.request_id)  # what is logged meanwhile carries the id
        try:
            for chunk in self._body:
                self._observation.bytes_out += len(chunk)
                yield chunk
        finally:
            logs.streaming(None)

    def close(self) -> None:
        logs.streaming(None)
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


def serve() -> Flask:
    """The app of plain `gunicorn wsgi:app` (wsgi.py), which has no master to prepare for it:
    secrets generated on the first run, pending migrations applied (under yoyo's lock, so
    workers starting together agree). DATABASE_URL is required; a database that is away only
    postpones the migrations to the next start. Exits with one line on a bad setting."""
    try:
        ensure_secrets()
        settings = load_settings()
        if settings.database_url is None:
            raise ConfigError("DATABASE_URL", "not set; `gunicorn wsgi:app` needs one (`make run` "
                                              "starts an embedded PostgreSQL)")
    except (ConfigError, OSError) as error:
        sys.exit(f"metamcp: cannot start: {error}")
    try:
        migrate(settings.database_url)
    except psycopg2.OperationalError as error:
        logger.warning("migrations not checked, the database is away: %s", first_line(error))
    return create_app(settings)


def warn_unreadable(registry: ServerRegistry) -> None:
    """Say at start (once per process) which servers the gateway cannot use because the current
    ENCRYPTION_KEY cannot open their secrets; never the secrets. A database not reachable yet
    is not a reason to fail the start here (the readiness probe reports it)."""
    try:
        names = registry.unreadable()
    except (MetaMCPError, psycopg2.Error):
        return
    if names:
        logger.warning("ENCRYPTION_KEY cannot decrypt the stored secrets of %d server(s): %s; they "
                       "are shown as errors and unusable until resealed (scripts/servers.py reseal "
                       "--old-key-file FILE) or their secrets are entered again",
                       len(names), ", ".join(names))


def create_app(settings: Settings | None = None, *, listen: bool = True) -> Flask:
    """Build the WSGI app. `listen=False` skips the LISTEN/NOTIFY thread (pure REST tests)."""
    settings = settings or load_settings()
    if settings.database_url is None:
        raise RuntimeError("create_app needs a database URL; the launcher starts the embedded one")
    logs.configure(settings)

    app = Flask("metamcp")
    app.json = UntrustedJSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="MetaMCP",
        API_VERSION=package_version(),
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/swagger-ui",
        OPENAPI_SWAGGER_UI_URL=swagger_ui.ASSETS_URL,  # served here (pinned), not from a CDN
        API_SPEC_OPTIONS={
            "info": {"description": "One authenticated MCP endpoint in front of many MCP servers."},
        },
    )

    db = Database(settings.database_url, settings.db_pool_size)
    authenticator = Authenticator(db, settings.jwt_secret, settings.jwt_lifetime, settings.cache_ttl)
    registry = ServerRegistry(db, SecretBox(settings.encryption_key), settings.upstream_policy,
                              StdioPolicy.from_settings(settings))
    warn_unreadable(registry)
    sessions = SessionStore(db, settings.session_idle_timeout)

    def publish(topic: Topic, details: dict[str, Any]) -> None:
        with db.transaction() as cur:
            repository.notify_change(cur, topic, **details)

    namespaces = NamespaceRegistry(db)
    endpoints = EndpointRegistry(db)
    gateway = Gateway(registry, settings, publish if listen else None, namespaces.sync)
    relay = Relay(db, settings.upstream_timeout, db.bus.origin)
    gateway.pool.on_request = relay.outside
    mailbox = Mailbox(db)
    resource_subscriptions = Subscriptions(db, gateway.pool, gateway.router, mailbox, gateway.executor)
    gateway.hear(resource_subscriptions.on_notification, resource_subscriptions.on_drop)
    mrtr = Mrtr(settings.jwt_secret, db, db.bus.origin, relay.deadline, settings.upstream_timeout)
    dispatcher = Dispatcher(gateway.router, gateway.catalog, gateway.pool, sessions, publish,
                            relay, resource_subscriptions, mrtr)
    streams = Streams(settings, sessions, gateway.catalog, relay, mailbox, resource_subscriptions)
    # Shared with the other workers when gunicorn's master made the tables before forking.
    limits = Limits(settings.rate_limit, settings.max_inflight_per_key, settings.auth_failure_limit)
    observers = observe.Observers()
    sse_hub = legacy_sse.SseHub(mailbox, dispatcher, settings, observers)
    # What each committed change refreshes: in this process once it commits, in the others
    # when their listener hears it.
    subscriptions: dict[Topic, list[Callback]] = {
        Topic.KEYS: [authenticator.on_change],
        Topic.SERVERS: [gateway.catalog.on_registry_change, namespaces.on_change],
        Topic.NAMESPACES: [namespaces.on_change, endpoints.on_change, gateway.catalog.on_namespace_change],
        Topic.SESSIONS: [sessions.on_change],
        Topic.LISTS: [gateway.catalog.on_list_change],
        Topic.CANCEL: [dispatcher.on_cancel],
        Topic.MAILBOX: [mailbox.on_notify],
        Topic.REPLY: [relay.on_reply],
        Topic.HANDOVER: [mrtr.handover.on_change],
    }
    for topic, callbacks in subscriptions.items():
        for callback in callbacks:
            db.bus.subscribe(topic, callback)
    listener = purger = None
    if listen:
        purger = SessionPurger(sessions, db, mailbox.purge)
        purger.start()
        resource_subscriptions.start(settings.subscription_check_seconds)
        listener = ChangeListener(settings.database_url, db.bus, report=db.report)
        listener.start()
    services = Services(
        settings, db, authenticator, registry, sessions, gateway, dispatcher, streams, namespaces,
        endpoints, sse_hub, mailbox, listener, Readiness(settings.database_url), limits,
        Admission(limits, streams.budget), observers, purger,
        resource_subscriptions if listen else None,
    )
    app.extensions["metamcp"] = services
    # What every finished request is handed to (metamcp.observe): the access line, the audit
    # log (calls recorded off the request path; admin changes in their own transaction, as
    # this process's actor outside a request) and the Prometheus metrics.
    observers.add(logs.access_line)
    db.audit_actor = "system" if settings.audit else None
    if settings.audit:
        services.audit = AuditLog(settings.database_url, settings.audit_retention_days)
        services.audit.start()
        observers.add(services.audit.sink)
    if settings.metrics:
        metrics.enable(settings.db_pool_size)
        observers.add(metrics.record)
        audit.report_dropped = metrics.audit_dropped  # records the full audit queue turned away
    app.register_blueprint(metrics_api.bp)
    app.register_blueprint(swagger_ui.bp)  # before the Api: its page template shadows flask-smorest's

    register_error_handlers(app)
    api = MetaMCPApi(app)
    api.spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or mcp_ API key"},
    )
    api.spec.components.security_scheme(
        "apiKeyHeader", {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    )
    for blueprint in (health_api.blp, health_api.admin_blp, auth_api.blp, keys_api.blp,
                      servers_api.blp, namespaces_api.blp, endpoints_api.blp, audit_api.blp):
        api.register_blueprint(blueprint)
    for mcp_blueprint in (transport.bp, legacy_sse.bp, tool_api.bp):
        app.register_blueprint(mcp_blueprint)
    app.before_request(begin_observation)  # first: a refusal by a later check is observed too
    app.before_request(check_json_body)

    @app.after_request
    def _no_sniff(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app.after_request(end_observation)

    return app
