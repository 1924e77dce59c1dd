"""`GET /health`: liveness and readiness for load balancers and humans."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from metamcp.api.schemas import HealthSchema
from metamcp.errors import MetaMCPError

blp = Blueprint("health", __name__, description="Service health")


def package_version() -> str:
    try:
        return version("metamcp")
    except PackageNotFoundError:
        return "unknown"


class Unavailable(MetaMCPError):
    status, code = 503, "unavailable"


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, description="The database cannot be reached")
    def get(self) -> dict[str, Any]:
        """Service status, version and database reachability"""
        services = current_app.extensions["metamcp"]
        reachable = services.db.ping()
        body = {
            "status": "ok" if reachable else "unavailable",
            "version": package_version(),
            "database": {"reachable": reachable},
            # This worker's view: each worker holds its own upstream sessions.
            "upstreams": services.gateway.health() if reachable else [],
        }
        if not reachable:
            raise Unavailable("The database cannot be reached.", body)
        return body
