"""`/swagger-ui` from the gateway's own pinned files (metamcp.api.swagger_ui): the page and its
assets over HTTP, then the page rendered by a real headless Chromium with every address but
127.0.0.1 unreachable, as for a user offline."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from tests.conftest import Gunicorn, child_env

#: What the page must load, and the type each must be served with (`nosniff` is on, so a wrong
#: type is a broken page).
EXPECTED_ASSETS = {
    "/swagger-ui/assets/swagger-ui.css": "text/css; charset=utf-8",
    "/swagger-ui/assets/swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "/swagger-ui/assets/swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "/swagger-ui/assets/favicon-32x32.png": "image/png",
}

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def page_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', html)


def test_the_page_loads_only_local_assets_and_declares_utf8(client: FlaskClient) -> None:
    response = client.get("/swagger-ui")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    html = response.get_data(as_text=True)
    assert re.search(r'<head>\s*<meta charset="utf-8">', html), html[:300]
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert set(page_urls(html)) == set(EXPECTED_ASSETS)
    assert '"/openapi.json"' in html


def test_each_asset_answers_with_its_type_and_cache_headers(client: FlaskClient) -> None:
    for url, content_type in EXPECTED_ASSETS.items():
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.content_type == content_type, url
        assert response.headers["Cache-Control"] == "public, max-age=86400", url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        body = response.get_data()
        assert len(body) > 10, url
        if content_type.startswith("text/"):
            body.decode("utf-8")  # the charset it is served with is the true one
        again = client.get(url, headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304, url
    bundle = client.get("/swagger-ui/assets/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle and not bundle.isascii()  # why the charset matters


@pytest.mark.parametrize("path", [
    "/swagger-ui/assets/..%2F__init__.py",
    "/swagger-ui/assets/%2e%2e%2f%2e%2e%2fsetup.cfg",
    "/swagger-ui/assets/../../setup.cfg",
    "/swagger-ui/assets/..",
    "/swagger-ui/assets/LICENSE",  # in the package's folder, but not one of the page's files
    "/swagger-ui/assets/swagger-ui.js.map",
    "/swagger-ui/assets/",
])
def test_anything_else_is_a_json_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, path
    assert response.is_json and response.json["error"] == "not_found", response.data[:200]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_a_real_browser_offline_renders_every_route(
    database_url: str, tmp_path: Path, start_gunicorn: Callable[..., Gunicorn],
) -> None:
    gateway = start_gunicorn(child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path / "data"),
                                       METAMCP_WORKERS="1", METAMCP_LOG_LEVEL="WARNING"))
    spec = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    summary = spec["paths"]["/api/v1/mcp/servers"]["post"]["summary"]
    assert CHROMIUM is not None
    # Offline: every name resolves to nothing and any other traffic goes to a closed proxy port;
    # only 127.0.0.1 (the gateway) is reached, directly. A CDN fetch would leave the page blank.
    command = [
        CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}", "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000", "--dump-dom", gateway.url + "/swagger-ui",
    ]
    browser = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, env={**os.environ, "HOME": str(tmp_path)})
    try:
        out, err = browser.communicate(timeout=60)
    finally:
        if browser.poll() is None:
            os.killpg(browser.pid, signal.SIGKILL)  # its own session: the renderer children too
            browser.wait(timeout=10)
    dom = out.decode("utf-8", "replace")
    rendered = f"DOM:\n{dom[:2000]}\nstderr:\n{err.decode('utf-8', 'replace')[-2000:]}"
    assert 'class="swagger-ui' in dom, rendered
    for path in ("/api/v1/mcp/servers", "/api/v1/mcp/servers/{server_id}", "/api/v1/auth/token",
                 "/api/v1/namespaces"):
        assert f'data-path="{path}"' in dom, (path, rendered)
    assert summary in dom, (summary, rendered)
    assert spec["info"]["title"] in dom
