"""Settings: parsing, validation errors that name the setting, generated secrets."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from metamcp.config import (
    ConfigError,
    ensure_secrets,
    load_settings,
    parse_encryption_key,
    read_env_file,
)

KEY = bytes(range(32))
GOOD = {"JWT_SECRET": "s" * 40, "ENCRYPTION_KEY": base64.b64encode(KEY).decode()}


def test_encryption_key_accepts_hex_and_both_base64_alphabets() -> None:
    assert parse_encryption_key(KEY.hex()) == KEY
    assert parse_encryption_key(base64.b64encode(KEY).decode()) == KEY
    assert parse_encryption_key(base64.urlsafe_b64encode(KEY).decode().rstrip("=")) == KEY


@pytest.mark.parametrize("value", ["", "short", "zz" * 32, base64.b64encode(b"x" * 16).decode()])
def test_malformed_encryption_key_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_encryption_key(value)
    assert caught.value.setting == "ENCRYPTION_KEY"
    assert str(caught.value).startswith("ENCRYPTION_KEY:")


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({**GOOD, "METAMCP_DATA_DIR": str(tmp_path / "d")})
    assert (settings.host, settings.port, settings.jwt_lifetime) == ("127.0.0.1", 12009, 900)
    assert settings.embedded and settings.pgdata == tmp_path / "d" / "postgres"
    assert settings.workers >= 2
    assert settings.encryption_key == KEY
    assert settings.subscription_check_seconds == 30.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METAMCP_PORT", "http"),
        ("METAMCP_PORT", "70000"),
        ("METAMCP_WORKERS", "0"),
        ("DATABASE_URL", "mysql://x"),
        ("JWT_SECRET", "too-short"),
        ("METAMCP_LOG_LEVEL", "LOUD"),
        ("METAMCP_UPSTREAM_DENY", "loopback,public"),
        ("METAMCP_UPSTREAM_ALLOW", "10.0.0.0/8,not a host"),
        ("METAMCP_UPSTREAM_ALLOW", "10.0.0.0/40"),
        ("METAMCP_STDIO", "maybe"),
        ("METAMCP_STDIO_COMMANDS", "/usr/bin/node,./sh"),
        ("METAMCP_THREADS", "2"),
        ("METAMCP_THREADS", "5000"),
        ("METAMCP_RATE_LIMIT", "-1"),
        ("METAMCP_MAX_INFLIGHT_PER_KEY", "many"),
        ("METAMCP_AUTH_FAILURE_LIMIT", "-5"),
        ("METAMCP_FORWARDED_HOPS", "11"),
        ("METAMCP_SUBSCRIPTION_CHECK_SECONDS", "0"),
        ("METAMCP_RESERVED_THREADS", "1024"),  # not below the 1024 threads of the default
        ("METAMCP_ALLOWED_HOSTS", "https://gw.example"),
        ("METAMCP_ALLOWED_HOSTS", "gw.example:8080"),
    ],
)
def test_bad_setting_is_named(name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings({**GOOD, "METAMCP_DATA_DIR": str(tmp_path), name: value})
    assert caught.value.setting == name


def test_allowed_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {**GOOD, "METAMCP_DATA_DIR": str(tmp_path)}
    assert load_settings(base).allowed_hosts == ()
    hosts = load_settings({**base, "METAMCP_ALLOWED_HOSTS": " GW.example , [fd00::1],10.0.0.5"}).allowed_hosts
    assert hosts == ("gw.example", "fd00::1", "10.0.0.5")


def test_upstream_address_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {**GOOD, "METAMCP_DATA_DIR": str(tmp_path)}
    default = load_settings(base).upstream_policy
    assert default.deny == frozenset() and not default.narrowed
    policy = load_settings({**base, "METAMCP_UPSTREAM_DENY": " Private , loopback",
                            "METAMCP_UPSTREAM_ALLOW": "10.1.0.0/16, MCP.Internal.,*.corp.example,::ffff:192.168.0.9"}
                           ).upstream_policy
    assert policy.deny == frozenset({"private", "loopback"})
    assert [str(n) for n in policy.allow_networks] == ["10.1.0.0/16", "192.168.0.9/32"]
    assert policy.allow_hosts == ("mcp.internal", "*.corp.example")
    with pytest.raises(ConfigError, match=r"^METAMCP_UPSTREAM_DENY: 'public' is not one of private, loopback"):
        load_settings({**base, "METAMCP_UPSTREAM_DENY": "public"})


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# comment\nexport METAMCP_PORT=13000\nMETAMCP_HOST='0.0.0.0'\nJWT_SECRET=\"%s\"\n" % ("j" * 40)
    )
    settings = load_settings({"ENCRYPTION_KEY": KEY.hex(), "METAMCP_HOST": "127.0.0.2",
                              "METAMCP_DATA_DIR": str(tmp_path)})
    assert settings.port == 13000
    assert settings.host == "127.0.0.2"
    assert settings.jwt_secret == "j" * 40


def test_secrets_generated_once_private_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"METAMCP_DATA_DIR": str(tmp_path / "data")}
    with pytest.raises(ConfigError):
        load_settings(env)
    path = tmp_path / "data" / "secrets.env"
    assert ensure_secrets(env) == path  # written now: the launcher says where
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = load_settings(env)
    assert ensure_secrets(env) is None  # already there: nothing to say
    second = load_settings(env)
    assert first.jwt_secret == second.jwt_secret and first.encryption_key == second.encryption_key
    assert len(first.encryption_key) == 32
    assert set(read_env_file(path)) == {"JWT_SECRET", "ENCRYPTION_KEY"}


def test_configured_secrets_are_not_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ensure_secrets({**GOOD, "METAMCP_DATA_DIR": str(tmp_path)}) is None
    assert not (tmp_path / "secrets.env").exists()


def test_stdio_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {**GOOD, "METAMCP_DATA_DIR": str(tmp_path)}
    default = load_settings(base)
    assert default.stdio_enabled is True and default.stdio_commands is None
    off = load_settings({**base, "METAMCP_STDIO": "OFF", "METAMCP_STDIO_COMMANDS": " npx, /usr/bin/node ,"})
    assert off.stdio_enabled is False and off.stdio_commands == ("npx", "/usr/bin/node")
    assert load_settings({**base, "METAMCP_STDIO": "on", "METAMCP_STDIO_COMMANDS": " "}).stdio_commands is None


def test_session_idle_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {**GOOD, "METAMCP_DATA_DIR": str(tmp_path)}
    assert load_settings(base).session_idle_timeout == 24 * 3600
    assert load_settings({**base, "METAMCP_SESSION_IDLE_TIMEOUT": "90"}).session_idle_timeout == 90
    for bad in ("0", "soon", str(400 * 86400), "59"):  # 59: below 4 keep-alive periods (15 s)
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, "METAMCP_SESSION_IDLE_TIMEOUT": bad})
        assert caught.value.setting == "METAMCP_SESSION_IDLE_TIMEOUT"
    short = {**base, "METAMCP_SESSION_IDLE_TIMEOUT": "5", "METAMCP_KEEPALIVE_SECONDS": "0.5"}
    assert load_settings(short).session_idle_timeout == 5


def test_limit_and_capacity_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = load_settings({**GOOD, "METAMCP_DATA_DIR": str(tmp_path)})
    assert (defaults.rate_limit, defaults.max_inflight_per_key, defaults.auth_failure_limit) == (1200, 64, 30)
    assert (defaults.threads, defaults.reserved_threads, defaults.db_pool_size) == (1024, 64, 16)
    assert defaults.forwarded_hops == 0
    tuned = load_settings({**GOOD, "METAMCP_DATA_DIR": str(tmp_path), "METAMCP_RATE_LIMIT": "0",
                           "METAMCP_MAX_INFLIGHT_PER_KEY": "500", "METAMCP_AUTH_FAILURE_LIMIT": "0",
                           "METAMCP_THREADS": "64", "METAMCP_RESERVED_THREADS": "8"})
    assert (tuned.rate_limit, tuned.max_inflight_per_key, tuned.auth_failure_limit) == (0, 500, 0)
    assert (tuned.threads, tuned.reserved_threads) == (64, 8)
    assert load_settings({**GOOD, "METAMCP_DATA_DIR": str(tmp_path),
                          "METAMCP_THREADS": "16"}).reserved_threads == 2  # threads // 16, at least 2
