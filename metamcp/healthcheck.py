"""The container health check: `python -m metamcp.healthcheck [/health|/ready]`.

Docker's HEALTHCHECK (liveness, /health) and compose (readiness, /ready) run it inside the
container. It asks the gateway on the address the gateway itself is configured to serve
(metamcp.config: METAMCP_HOST, METAMCP_PORT, .env), so changing the port never leaves a probe
knocking on the old one. Exit status 0 when the answer is 200, 1 otherwise (one line on
stderr saying why), 2 on a bad argument.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from metamcp.config import ConfigError, load_settings

#: The two unauthenticated probe routes (metamcp/api/health.py).
PATHS = ("/health", "/ready")
#: Seconds to wait for the answer; below the 5 s timeouts the deployment files give the probe.
TIMEOUT = 4.0


def probe_address(host: str) -> str:
    """Where to connect for a gateway bound to `host`: a wildcard means this host's loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def check(path: str) -> tuple[bool, str]:
    """GET `path` on the configured address; (healthy, what was seen)."""
    try:
        settings = load_settings(require_secrets=False)
    except (ConfigError, OSError) as error:
        return False, f"bad configuration: {error}"
    url = f"http://{probe_address(settings.host)}:{settings.port}{path}"
    # No proxy: HTTP_PROXY in the container's environment must not carry a loopback probe away.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as error:
        return False, f"{url}: {error}"
    return status == 200, f"{url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "/health"
    if len(args) > 1 or path not in PATHS:
        print(f"usage: python -m metamcp.healthcheck [{'|'.join(PATHS)}]", file=sys.stderr)
        return 2
    healthy, seen = check(path)
    if not healthy:
        print(f"unhealthy: {seen}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
