"""Settings: the one place that reads the environment, a `.env` file and generated secrets.

Precedence: process environment, then `.env` in the working directory, then the secrets file
that `ensure_secrets()` writes under the data directory on first run.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from metamcp.addresses import DENIABLE, AddressPolicy, parse_allow_entry

SECRETS_FILE = "secrets.env"
GENERATED_SECRETS = ("JWT_SECRET", "ENCRYPTION_KEY")


@functools.cache
def package_version() -> str:
    """The service's own version (the installed package's metadata): in health answers, the
    OpenAPI documents, and the clientInfo and serverInfo it gives MCP peers."""
    try:
        return version("metamcp")
    except PackageNotFoundError:
        return "unknown"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one gateway process."""

    data_dir: Path
    #: None means "use the embedded PostgreSQL under data_dir".
    database_url: str | None
    host: str = "127.0.0.1"
    port: int = 12009
    workers: int = 2
    #: Threads per worker: long tool calls and standing streams each hold one while waiting.
    threads: int = 1024
    #: Threads of a worker that long calls and streams never take (kept for short requests).
    reserved_threads: int = 64
    jwt_secret: str = field(default="", repr=False)
    encryption_key: bytes = field(default=b"", repr=False)
    jwt_lifetime: int = 900
    max_body_bytes: int = 1024 * 1024
    #: Safety net under LISTEN/NOTIFY invalidation of the in-process caches.
    cache_ttl: float = 60.0
    log_level: str = "INFO"
    #: How log lines are written (METAMCP_LOG_FORMAT): "text" or "json" (metamcp.logs).
    log_format: str = "text"
    db_pool_size: int = 10
    #: Browser origins allowed on /mcp besides localhost ones; "*" allows any.
    allowed_origins: tuple[str, ...] = ()
    #: Host names MCP routes answer besides localhost ones when listening on loopback (DNS
    #: rebinding protection); `*` for any.
    allowed_hosts: tuple[str, ...] = ()
    upstream_connect_timeout: float = 5.0
    #: Seconds without any data from an upstream before a call fails.
    upstream_timeout: float = 60.0
    #: Per-upstream limit while fanning out a list; a slower upstream is skipped.
    list_timeout: float = 10.0
    list_cache_ttl: float = 300.0
    #: Items per page of an aggregated list.
    page_size: int = 1000
    #: Seconds between keep-alive comments on long-lived SSE streams.
    keepalive_seconds: float = 15.0
    #: Seconds a stdio child may take to answer initialize (npx may download first).
    stdio_start_timeout: float = 30.0
    #: A stdio child unused this long is stopped (started again on the next request).
    stdio_idle_timeout: float = 600.0
    #: Stdio children one worker process may run at once.
    stdio_max_children: int = 16
    #: Which addresses upstream URLs may reach (METAMCP_UPSTREAM_DENY, METAMCP_UPSTREAM_ALLOW).
    upstream_policy: AddressPolicy = field(default_factory=AddressPolicy)
    #: Whether stdio servers may be registered and started at all (METAMCP_STDIO).
    stdio_enabled: bool = True
    #: Executables stdio servers may run (absolute paths or bare names looked up on PATH);
    #: None: any (METAMCP_STDIO_COMMANDS unset).
    stdio_commands: tuple[str, ...] | None = None
    #: A downstream MCP session unused this long expires (404; the client initializes again).
    session_idle_timeout: float = 86400.0
    #: Requests a minute per key (token bucket, burst of as many); 0: unlimited.
    rate_limit: int = 1200
    #: Tool calls one key may have in flight across the workers; 0: unlimited.
    max_inflight_per_key: int = 64
    #: Failed authentications a minute per client address before it gets 429; 0: unlimited.
    auth_failure_limit: int = 30
    #: Reverse proxies in front that append to X-Forwarded-For; 0: trust only REMOTE_ADDR.
    forwarded_hops: int = 0
    #: Seconds between checks that resource subscriptions are still held upstream (a worker
    #: gone, an upstream restarted).
    subscription_check_seconds: float = 30.0
    #: The audit log of calls and admin changes (METAMCP_AUDIT), and the days its rows are
    #: kept (METAMCP_AUDIT_RETENTION_DAYS; 0: forever).
    audit: bool = True
    audit_retention_days: int = 30
    #: Prometheus metrics (metamcp.metrics): recorded and served at /metrics (METAMCP_METRICS).
    metrics: bool = True
    #: A bearer token that may read /metrics besides admin keys (METAMCP_METRICS_TOKEN).
    metrics_token: str = field(default="", repr=False)
    #: /metrics answers anyone (METAMCP_METRICS_PUBLIC).
    metrics_public: bool = False
    #: prometheus_client's multiprocess directory chosen by the operator (PROMETHEUS_MULTIPROC_DIR);
    #: None: gunicorn's master makes a temporary one.
    metrics_dir: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file: KEY=VALUE lines, `#` comments, optional quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _environ(env: Mapping[str, str] | None, read_dotenv: bool = True) -> dict[str, str]:
    merged = read_env_file(Path.cwd() / ".env") if read_dotenv else {}
    merged.update(os.environ if env is None else env)
    return merged


def _data_dir(values: Mapping[str, str]) -> Path:
    return Path(values.get("METAMCP_DATA_DIR") or "./.data").expanduser().resolve()


def ensure_secrets(env: Mapping[str, str] | None = None, *, read_dotenv: bool = True) -> Path | None:
    """Generate JWT_SECRET and ENCRYPTION_KEY once, kept in the data directory (mode 0600).

    Returns the file's path when this call wrote it (so a launcher can say where), else None.

    Launchers call this (gunicorn's master, scripts/keys.py, wsgi.py). Processes racing to
    create the file agree: the first one linked in place wins and the others read it.
    `read_dotenv=False`: `env` is complete (the admin scripts read the project root's `.env`).
    """
    values = _environ(env, read_dotenv)
    data_dir = _data_dir(values)
    path = data_dir / SECRETS_FILE
    stored = read_env_file(path)
    missing = [name for name in GENERATED_SECRETS if not values.get(name) and name not in stored]
    if not missing:
        return None
    generated = {
        "JWT_SECRET": secrets.token_urlsafe(48),
        "ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    stored.update({name: generated[name] for name in missing})
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# Generated by MetaMCP on first run. Keep private; losing ENCRYPTION_KEY\n")
        fh.write("# makes stored upstream credentials unreadable.\n")
        fh.writelines(f"{name}={value}\n" for name, value in stored.items())
    try:
        if path.exists():
            os.replace(tmp, path)  # completing a file that lacks one of them
        else:
            os.link(tmp, path)  # fails if another process created it meanwhile: theirs stands
    except FileExistsError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def parse_encryption_key(value: str) -> bytes:
    """Accept 32 bytes as 64 hex digits or (URL-safe or standard) base64."""
    text = value.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
    if len(key) != 32:
        raise ConfigError(
            "ENCRYPTION_KEY",
            "must be 32 random bytes, base64 or hex encoded "
            "(generate one with: python -c 'import secrets,base64;"
            "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())')",
        )
    return key


def _number(values: Mapping[str, str], name: str, default: float, low: float, high: float,
            parse: type[int] | type[float], what: str, unit: str = "") -> Any:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        number = parse(raw)
    except ValueError:
        raise ConfigError(name, f"must be {what}, got {raw!r}") from None
    if not low <= number <= high:
        raise ConfigError(name, f"must be between {low:g} and {high:g}{unit}, got {number:g}")
    return number


def _int(values: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return int(_number(values, name, default, low, high, int, "a whole number"))


def _seconds(values: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return float(_number(values, name, default, low, high, float, "a number of seconds", " seconds"))


def _hosts(values: Mapping[str, str]) -> tuple[str, ...]:
    raw = values.get("METAMCP_ALLOWED_HOSTS", "")
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        if host != "*" and not re.fullmatch(r"[a-z0-9.-]{1,253}|\[?[0-9a-f:.]{2,45}\]?", host):
            raise ConfigError("METAMCP_ALLOWED_HOSTS", f"{host!r} is not a host name (no port, no scheme) or *")
    return tuple(host.strip("[]") for host in hosts)


def _origins(values: Mapping[str, str]) -> tuple[str, ...]:
    raw = values.get("METAMCP_ALLOWED_ORIGINS", "")
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError("METAMCP_ALLOWED_ORIGINS", f"{origin!r} is not an http(s) origin or *")
    return origins


def _upstream_policy(values: Mapping[str, str]) -> AddressPolicy:
    deny = {d.strip().lower() for d in values.get("METAMCP_UPSTREAM_DENY", "").split(",") if d.strip()}
    unknown = sorted(deny - set(DENIABLE))
    if unknown:
        raise ConfigError("METAMCP_UPSTREAM_DENY",
                          f"{unknown[0]!r} is not one of {', '.join(DENIABLE)} (comma-separated)")
    networks, hosts = [], []
    for raw in values.get("METAMCP_UPSTREAM_ALLOW", "").split(","):
        if not raw.strip():
            continue
        try:
            entry = parse_allow_entry(raw)
        except ValueError as e:
            raise ConfigError("METAMCP_UPSTREAM_ALLOW",
                              f"{raw.strip()!r} is not a CIDR, an IP address or a host name") from e
        if isinstance(entry, str):
            hosts.append(entry)
        else:
            networks.append(entry)
    return AddressPolicy(frozenset(deny), tuple(networks), tuple(hosts))


#: What a stdio child inherits of the gateway's environment (plus LC_*); never its secrets.
INHERITED_ENV = (
    "PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL", "TERM",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
    "no_proxy", "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def child_environment(configured: Mapping[str, str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stdio child: the allow-list above, then its configured values,
    in which `${VAR}` takes the gateway's own value of VAR (empty when unset)."""
    source = os.environ if env is None else env
    child = {k: v for k, v in source.items() if k in INHERITED_ENV or k.startswith("LC_")}
    for name, value in configured.items():
        child[name] = _REFERENCE.sub(lambda m: source.get(m.group(1), ""), value)
    return child


def _switch(values: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (values.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off"):
        raise ConfigError(name, f"must be on or off, got {raw!r}")
    return raw == "on"


def _commands(values: Mapping[str, str]) -> tuple[str, ...] | None:
    """METAMCP_STDIO_COMMANDS: absolute paths or bare names; a relative path would depend on
    the directory a check runs in, so it is refused."""
    raw = values.get("METAMCP_STDIO_COMMANDS")
    if raw is None or not raw.strip():
        return None
    commands = tuple(c.strip() for c in raw.split(",") if c.strip())
    for command in commands:
        if "/" in command and not command.startswith("/"):
            raise ConfigError("METAMCP_STDIO_COMMANDS",
                              f"{command!r} is a relative path; give an absolute path or a bare name")
    return commands


def _metrics_token(values: Mapping[str, str]) -> str:
    token = (values.get("METAMCP_METRICS_TOKEN") or "").strip()
    if token and (len(token) < 32 or any(c.isspace() or not c.isprintable() for c in token)):
        raise ConfigError("METAMCP_METRICS_TOKEN", "must be at least 32 printable characters without spaces "
                                                   "(generate one with: python -c 'import secrets;"
                                                   "print(secrets.token_urlsafe(32))')")
    return token


def _metrics_dir(values: Mapping[str, str]) -> Path | None:
    raw = (values.get("PROMETHEUS_MULTIPROC_DIR") or "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR", f"{raw!r} is not an absolute path")
    return path


def _default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def load_settings(env: Mapping[str, str] | None = None, *, require_secrets: bool = True,
                  read_dotenv: bool = True) -> Settings:
    """Build and validate Settings; raises ConfigError naming the first bad setting.

    `require_secrets=False` (gunicorn's config, read before the secrets are generated) leaves
    a missing JWT_SECRET or ENCRYPTION_KEY empty instead of failing. `read_dotenv=False`:
    `env` is complete, no `.env` from the working directory under it.
    """
    values = _environ(env, read_dotenv)
    data_dir = _data_dir(values)
    stored = read_env_file(data_dir / SECRETS_FILE)

    def secret(name: str) -> str:
        value = values.get(name) or stored.get(name)
        if not value and require_secrets:
            raise ConfigError(name, "not set (run `make run` once to generate it, or set it in .env)")
        return value or ""

    jwt_secret = secret("JWT_SECRET")
    if len(jwt_secret) < 32 and (jwt_secret or require_secrets):
        raise ConfigError("JWT_SECRET", "must be at least 32 characters")
    encryption_key = secret("ENCRYPTION_KEY")
    database_url = values.get("DATABASE_URL") or None
    if database_url is not None and not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("DATABASE_URL", "must be a postgresql:// URL")
    log_level = values.get("METAMCP_LOG_LEVEL", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("METAMCP_LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")
    log_format = (values.get("METAMCP_LOG_FORMAT") or "text").strip().lower()
    if log_format not in ("text", "json"):
        raise ConfigError("METAMCP_LOG_FORMAT", f"must be text or json, got {values['METAMCP_LOG_FORMAT']!r}")
    threads = _int(values, "METAMCP_THREADS", 1024, 4, 4096)
    reserved = _int(values, "METAMCP_RESERVED_THREADS", max(2, threads // 16), 1, threads - 1)
    keepalive = _seconds(values, "METAMCP_KEEPALIVE_SECONDS", 15.0, 0.05, 300)
    session_idle_timeout = _seconds(values, "METAMCP_SESSION_IDLE_TIMEOUT", 86400.0, 1, 86400 * 365)
    if session_idle_timeout < 4 * keepalive:  # an open stream touches its session at keep-alives
        raise ConfigError("METAMCP_SESSION_IDLE_TIMEOUT",
                          f"must be at least 4 times METAMCP_KEEPALIVE_SECONDS ({4 * keepalive:g} seconds)")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        host=values.get("METAMCP_HOST") or "127.0.0.1",
        port=_int(values, "METAMCP_PORT", 12009, 1, 65535),
        workers=_int(values, "METAMCP_WORKERS", _default_workers(), 1, 64),
        threads=threads,
        reserved_threads=reserved,
        jwt_secret=jwt_secret,
        encryption_key=parse_encryption_key(encryption_key) if encryption_key else b"",
        jwt_lifetime=_int(values, "JWT_LIFETIME_SECONDS", 900, 30, 86400 * 30),
        max_body_bytes=_int(values, "METAMCP_MAX_BODY_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
        log_level=log_level,
        log_format=log_format,
        # Threads wait for a connection (metamcp.db), so the pool need not match the threads.
        db_pool_size=_int(values, "METAMCP_DB_POOL_SIZE", 16, 2, 512),
        allowed_origins=_origins(values),
        allowed_hosts=_hosts(values),
        upstream_connect_timeout=_seconds(values, "METAMCP_UPSTREAM_CONNECT_TIMEOUT", 5.0, 0.1, 120),
        upstream_timeout=_seconds(values, "METAMCP_UPSTREAM_TIMEOUT", 60.0, 0.1, 3600),
        list_timeout=_seconds(values, "METAMCP_LIST_TIMEOUT", 10.0, 0.1, 600),
        list_cache_ttl=_seconds(values, "METAMCP_LIST_CACHE_TTL", 300.0, 0, 86400),
        page_size=_int(values, "METAMCP_PAGE_SIZE", 1000, 1, 100000),
        keepalive_seconds=keepalive,
        stdio_start_timeout=_seconds(values, "METAMCP_STDIO_START_TIMEOUT", 30.0, 0.1, 600),
        stdio_idle_timeout=_seconds(values, "METAMCP_STDIO_IDLE_TIMEOUT", 600.0, 1, 86400 * 7),
        stdio_max_children=_int(values, "METAMCP_STDIO_MAX_CHILDREN", 16, 1, 1024),
        upstream_policy=_upstream_policy(values),
        stdio_enabled=_switch(values, "METAMCP_STDIO", True),
        stdio_commands=_commands(values),
        session_idle_timeout=session_idle_timeout,
        rate_limit=_int(values, "METAMCP_RATE_LIMIT", 1200, 0, 1_000_000),
        max_inflight_per_key=_int(values, "METAMCP_MAX_INFLIGHT_PER_KEY", 64, 0, 1_000_000),
        auth_failure_limit=_int(values, "METAMCP_AUTH_FAILURE_LIMIT", 30, 0, 1_000_000),
        forwarded_hops=_int(values, "METAMCP_FORWARDED_HOPS", 0, 0, 10),
        subscription_check_seconds=_seconds(values, "METAMCP_SUBSCRIPTION_CHECK_SECONDS", 30.0, 0.1, 3600),
        audit=_switch(values, "METAMCP_AUDIT", True),
        audit_retention_days=_int(values, "METAMCP_AUDIT_RETENTION_DAYS", 30, 0, 36500),
        metrics=_switch(values, "METAMCP_METRICS", True),
        metrics_token=_metrics_token(values),
        metrics_public=_switch(values, "METAMCP_METRICS_PUBLIC", False),
        metrics_dir=_metrics_dir(values),
    )
