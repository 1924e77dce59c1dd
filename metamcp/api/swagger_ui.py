"""Swagger UI's files served by the gateway itself, so `/swagger-ui` works offline.

flask-smorest renders the page (`/swagger-ui`) and lets it load Swagger UI's CSS and scripts
from OPENAPI_SWAGGER_UI_URL; by default that was an unpinned CDN, and the page was blank without
the network. The files come from the flask-swagger-ui package (a dependency pinned in setup.cfg,
whose dist/ folder is swagger-ui-dist at the package's version); only its blueprint is not used.

Only the files named in ASSETS are served, from that one folder, so no request path can reach
another file. This blueprint also holds the page's template (templates/swagger_ui.html), which
shadows flask-smorest's own to declare `<meta charset="utf-8">`: registered before the Api, its
template comes first in Flask's lookup.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

from flask import Blueprint, Response, send_file

from metamcp.errors import NotFound

logger = logging.getLogger(__name__)

#: Where OPENAPI_SWAGGER_UI_URL points: the page asks for `<this>swagger-ui-bundle.js` etc.
ASSETS_URL = "/swagger-ui/assets/"

#: The served files and their types. Text is declared UTF-8: the bundle has non-ASCII
#: characters, and decoded as anything else it fails with "Invalid or unexpected token".
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

#: A day: the files change only with the installed package; ETag/Last-Modified revalidate them.
MAX_AGE = 86400

bp = Blueprint("swagger_ui_assets", __name__, template_folder="templates")


@functools.cache
def assets_folder() -> Path | None:
    """flask-swagger-ui's dist/ folder, found without importing the package (its blueprint is
    not wanted); None when it is not installed: the assets answer 404, the rest still works."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    for location in (spec and spec.submodule_search_locations) or []:
        folder = Path(location) / "dist"
        if folder.is_dir():
            return folder
    logger.warning("flask-swagger-ui is not installed: /swagger-ui has no assets")
    return None


@bp.get(ASSETS_URL + "<name>")
def asset(name: str) -> Response:
    """Role: none (public, like /swagger-ui and /openapi.json: static files, no data)."""
    content_type = ASSETS.get(name)
    folder = assets_folder()
    if content_type is None or folder is None:
        raise NotFound(f"No Swagger UI asset {name!r}.")
    response = send_file(folder / name, max_age=MAX_AGE, conditional=True)
    response.content_type = content_type  # as declared (send_file's mimetype= appends a charset)
    response.headers["Cache-Control"] = f"public, max-age={MAX_AGE}"
    return response
