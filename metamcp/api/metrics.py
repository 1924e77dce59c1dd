"""`GET /metrics`: the Prometheus text of every worker (metamcp.metrics), for a scraper.

Who may read it: anyone when METAMCP_METRICS_PUBLIC=on; else `Authorization: Bearer
<METAMCP_METRICS_TOKEN>` (Prometheus' `bearer_token`) or an admin key, as on the admin API.
No credential is 401, a client key 403. It is no REST resource, so not in the OpenAPI document.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app

from metamcp import metrics
from metamcp.api.auth import ADMIN_ONLY, limited_authentication, request_credential
from metamcp.config import Settings
from metamcp.errors import Forbidden, NotFound, Unauthorized

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    settings: Settings = current_app.extensions["metamcp"].settings
    if not settings.metrics:
        raise NotFound("Metrics are off (METAMCP_METRICS=off).")
    if not settings.metrics_public:
        authorize(settings)
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


def authorize(settings: Settings) -> None:
    """The metrics token (compared in constant time), else an admin credential checked as the
    admin API checks it (failures counted against the address, the key's rate)."""
    credential = request_credential()
    if credential is None:
        raise Unauthorized("Send 'Authorization: Bearer <METAMCP_METRICS_TOKEN or admin key>' or "
                           "'X-API-Key: <admin key>'.")
    token = settings.metrics_token
    if token and hmac.compare_digest(credential.encode(), token.encode()):
        return
    principal = limited_authentication(credential)
    if not principal.is_admin:
        raise Forbidden(f"Metrics need an admin key or the metrics token. {ADMIN_ONLY}.",
                        {"role": principal.role})
