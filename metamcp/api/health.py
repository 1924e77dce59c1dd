"""Probes and the health report: `GET /health` (liveness), `GET /ready` (readiness) and the
admin-only `GET /api/v1/health` (upstreams, children, database pool of the answering worker).

None of them starts a stdio child or waits on an upstream; /health does not even touch the
database, and /ready waits on it for at most a couple of seconds.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.auth import authenticate_request, documented
from metamcp.api.schemas import ErrorSchema, HealthDetailSchema, HealthSchema, ReadySchema
from metamcp.config import package_version
from metamcp.errors import MetaMCPError

blp = Blueprint("health", __name__, description="Probes for load balancers and orchestrators")
admin_blp = Blueprint("health_detail", __name__, url_prefix="/api/v1/health",
                      description="What each worker knows of its upstreams, children and database")
admin_blp.before_request(authenticate_request)

#: Seconds a load balancer is told to wait before asking /ready again.
RETRY_AFTER = 5


class NotReady(MetaMCPError):
    status, code = 503, "unavailable"


@blp.after_request
def _retry_after(response: Response) -> Response:
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", str(RETRY_AFTER))
    return response


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, Any]:
        """Liveness: the process answers

        Answered from memory: no database, no upstream, no names. For liveness probes and
        the Docker HEALTHCHECK; use /ready to decide whether to send traffic.
        """
        return {"status": "ok", "version": package_version()}


@blp.route("/ready")
class Ready(MethodView):
    @blp.response(200, ReadySchema)
    @blp.alt_response(503, schema=ErrorSchema, headers={"Retry-After": {
        "description": "Seconds to wait before asking again", "schema": {"type": "integer"}}},
        description="The database cannot be reached or a migration is not applied")
    def get(self) -> dict[str, Any]:
        """Readiness: the database answers and all migrations are applied

        For load balancers and readiness probes. The database check is bounded (about 2 s)
        and shared by concurrent probes.
        """
        state = current_app.extensions["metamcp"].readiness.check()
        if not state.ready:
            raise NotReady(f"Not ready: {state.problem}.", {"status": "unavailable"})
        return {"status": "ready", "version": package_version()}


@admin_blp.route("")
class HealthDetail(MethodView):
    @documented(admin_blp, {})
    @admin_blp.response(200, HealthDetailSchema)
    def get(self) -> dict[str, Any]:
        """Health report of the answering worker

        Each active upstream's last known state in this worker (`unknown` until the worker
        used it; nothing is pinged or started here), its stdio children, its database pool
        and readiness. Other workers may report differently.
        """
        services = current_app.extensions["metamcp"]
        state = services.readiness.check()
        return {
            "status": "ok" if state.ready else "unavailable",
            "version": package_version(),
            "worker": {"pid": os.getpid()},
            "database": {"reachable": state.reachable, "migrations_applied": state.migrations_applied, "problem": state.problem,
                         "pool": services.db.stats()},
            "sessions": {"cached": services.sessions.cached(),
                         "idle_timeout": services.sessions.idle_timeout},
            "upstreams": services.gateway.health.report(services.gateway.pool.servers(), services.gateway.pool.kept,
                                                        services.gateway.pool.unreadable()),
        }
