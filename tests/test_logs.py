"""Log lines (metamcp.logs): the JSON and text formats, the request id on records written while
a request is served, the access line, and the redaction of secrets. Pure logic: a handler on a
StringIO, no processes (tests/test_logs_e2e.py runs the real gunicorn)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from metamcp import crypto, logs, observe
from metamcp.config import ConfigError, Settings, load_settings

from .conftest import TEST_ENCRYPTION_KEY, TEST_JWT_SECRET

ISO_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Captured:
    """A logger whose lines go through metamcp's handler into a string."""

    def __init__(self, log_format: str) -> None:
        self.out = io.StringIO()
        self.handler = logs.handler(log_format, self.out)
        self.logger = logging.getLogger(f"metamcp.test_logs.{log_format}")
        self._loggers = [self.logger, logs.access_logger]
        for logger in self._loggers:
            logger.addHandler(self.handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False

    def close(self) -> None:
        for logger in self._loggers:
            logger.removeHandler(self.handler)
            logger.setLevel(logging.NOTSET)
            logger.propagate = True

    def lines(self) -> list[str]:
        text = self.out.getvalue()
        assert text.endswith("\n")
        return text[:-1].split("\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def secrets_known() -> Iterator[None]:
    logs.remember_secrets(Settings(data_dir=Path("/tmp"), database_url=None, jwt_secret=TEST_JWT_SECRET,
                                   encryption_key=TEST_ENCRYPTION_KEY))
    yield
    logs.remember_secrets(Settings(data_dir=Path("/tmp"), database_url=None))


@pytest.fixture
def as_json(secrets_known: None) -> Iterator[Captured]:
    captured = Captured("json")
    yield captured
    captured.close()


@pytest.fixture
def as_text(secrets_known: None) -> Iterator[Captured]:
    captured = Captured("text")
    yield captured
    captured.close()


def served(status: int = 200, route: str = "/metamcp/<endpoint>/mcp") -> observe.Observation:
    """A finished request: a client key's tools/call through an endpoint."""
    observation = observe.Observation("req-1", "POST", route, "/metamcp/research/mcp", "10.0.0.7",
                                      key_id=7, key_name="ci agent", role="client", endpoint="research",
                                      session="S" * 43)
    op = observation.operation("tools/call", "alpha__echo")
    op.routed("alpha", "echo")
    op.upstream_seconds = 0.0042
    observation.status, observation.bytes_out, observation.duration = status, 321, 0.01234
    return observation


def test_json_lines_are_one_object_each_with_time_level_logger_message_and_pid(as_json: Captured) -> None:
    as_json.logger.info("upstream %s: initialized (protocol %s)", "alpha", "2025-11-25")
    as_json.logger.warning("two\nlines and a \u2028 separator")
    first, second = as_json.records()
    assert ISO_MS_UTC.fullmatch(first["ts"]), first["ts"]
    assert first["level"] == "INFO" and first["logger"] == as_json.logger.name
    assert first["message"] == "upstream alpha: initialized (protocol 2025-11-25)"
    assert first["pid"] == os.getpid() and "request_id" not in first and "exc" not in first
    assert second["message"] == "two\nlines and a \u2028 separator" and len(as_json.lines()) == 2
    assert as_json.out.getvalue().isascii()


def test_an_exception_stays_on_its_line_as_one_exc_field(as_json: Captured) -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        as_json.logger.exception("failed")
    lines = as_json.lines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "ERROR" and record["message"] == "failed"
    assert record["exc"].startswith("Traceback") and "ValueError: boom\nsecond line" in record["exc"]


def test_an_uncaught_exception_in_a_thread_is_one_record(as_json: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", logs.log_thread_exception)
    logs.logger.addHandler(as_json.handler)
    try:
        def fail() -> None:
            raise KeyError("lost")

        thread = threading.Thread(target=fail, name="doomed")
        thread.start()
        thread.join(timeout=5)
    finally:
        logs.logger.removeHandler(as_json.handler)
    (record,) = as_json.records()
    assert record["message"] == "uncaught exception in thread doomed" and "KeyError: 'lost'" in record["exc"]


def test_records_written_while_a_request_is_served_carry_its_id(as_json: Captured, as_text: Captured) -> None:
    observe.begin(observe.Observation("abc-123", "POST", "/mcp", "/mcp", "127.0.0.1"))
    try:
        as_json.logger.warning("during")
        as_text.logger.warning("during")
    finally:
        observe.begin(None)
    as_json.logger.warning("after")
    during, after = as_json.records()
    assert during["request_id"] == "abc-123" and "request_id" not in after
    assert as_text.lines()[0].endswith("WARNING metamcp.test_logs.text: during request_id=abc-123")


def test_the_access_line_has_the_request_caller_call_and_timing(as_json: Captured) -> None:
    logs.access_line(served())
    (line,) = as_json.records()
    assert line["logger"] == "metamcp.access" and line["level"] == "INFO"
    assert line["message"] == "POST /metamcp/research/mcp 200 12.3ms"
    expected = {
        "request_id": "req-1", "method": "POST", "route": "/metamcp/<endpoint>/mcp",
        "path": "/metamcp/research/mcp", "status": 200, "duration_ms": 12.34, "bytes": 321,
        "client": "10.0.0.7", "key_id": 7, "key_name": "ci agent", "role": "client",
        "endpoint": "research", "mcp_method": "tools/call", "tool": "alpha__echo", "server": "alpha",
        "upstream_ms": 4.2, "outcome": "ok",
    }
    assert {k: line[k] for k in expected} == expected
    assert "error_code" not in line and "operations" not in line
    # The session id is a capability: only a digest of it, never the id or a part of it.
    assert re.fullmatch(r"[0-9a-f]{12}", line["session"]) and "SSSS" not in json.dumps(line)
    assert line["session"] == logs.session_tag("S" * 43) != logs.session_tag("S" * 42 + "T")


def test_the_access_line_of_a_batch_a_refusal_and_a_probe(as_json: Captured) -> None:
    batch = served()
    failing = batch.operation("tools/call", "beta__fail")
    failing.answered({"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "x"}})
    logs.access_line(batch)
    refused = observe.Observation("req-2", "POST", "/mcp", "/mcp", "10.0.0.8")
    refused.status = 401
    logs.access_line(refused)
    probe = served(200, "/ready")
    logs.access_line(probe)
    logs.access_line(served(503, "/ready"))
    as_json.logger.setLevel(logging.INFO)
    logs.access_logger.setLevel(logging.INFO)
    logs.access_line(probe)  # a probe that succeeds is DEBUG: not written at INFO
    lines = as_json.records()
    assert len(lines) == 4
    assert (lines[0]["outcome"], lines[0]["error_code"], lines[0]["operations"]) == ("error", -32603, 2)
    assert lines[1]["status"] == 401 and not {"key_id", "key_name", "tool", "session", "mcp_method"} & set(lines[1])
    assert (lines[2]["level"], lines[2]["route"]) == ("DEBUG", "/ready")
    assert (lines[3]["level"], lines[3]["status"]) == ("INFO", 503)


def test_text_access_lines_are_readable_and_cannot_forge_lines(as_text: Captured) -> None:
    logs.access_line(served())
    forged = observe.Observation("req-3", "GET", "unmatched", "/x\n2026-01-01 INFO fake: line", "10.0.0.9")
    forged.status = 404
    logs.access_line(forged)
    first, second = as_text.lines()
    assert " INFO metamcp.access: POST /metamcp/research/mcp 200 12.3ms request_id=req-1 " in first
    assert ' key_id=7 key_name="ci agent" role=client endpoint=research ' in first
    assert first.endswith(" tool=alpha__echo server=alpha upstream_ms=4.2 outcome=ok")
    assert "GET /x\\n2026-01-01 INFO fake: line 404" in second


def test_long_request_text_is_cut_in_access_lines(as_json: Captured) -> None:
    observation = served()
    observation.operations[0].name = "t" * 5000
    logs.access_line(observation)
    (line,) = as_json.records()
    assert line["tool"] == "t" * logs.MAX_FIELD_CHARS + "..."


def test_secrets_are_redacted_from_messages_arguments_exceptions_and_access_fields(as_json: Captured) -> None:
    key = crypto.generate_api_key().plain
    token = crypto.issue_jwt(3, TEST_JWT_SECRET, 60, role="client")
    encodings = [TEST_ENCRYPTION_KEY.hex(), TEST_ENCRYPTION_KEY.hex().upper(),
                 base64.b64encode(TEST_ENCRYPTION_KEY).decode(), base64.urlsafe_b64encode(TEST_ENCRYPTION_KEY).decode(),
                 base64.urlsafe_b64encode(TEST_ENCRYPTION_KEY).decode().rstrip("=")]
    as_json.logger.info("key %s", key)
    as_json.logger.info("Authorization: Bearer %s", token)
    as_json.logger.info("Authorization: Bearer upstream-bearer-token-9876")
    as_json.logger.info("signed with %s", TEST_JWT_SECRET)
    for encoding in encodings:
        as_json.logger.info("ENCRYPTION_KEY=%s", encoding)
    as_json.logger.info("connecting to postgresql://metamcp:%s@db:5432/metamcp", "pg-password")
    as_json.logger.info("GET https://up.example/mcp?x=1&access_token=%s&y=2 failed", "tok-secret-1")
    try:
        raise RuntimeError(f"upstream refused {key}")
    except RuntimeError:
        as_json.logger.exception("call failed")
    as_json.logger.info("x", stack_info=True, extra={"unused": key})
    observation = served()
    observation.operations[0].name = token
    observation.key_name = f"named {key}"
    logs.access_line(observation)
    out = as_json.out.getvalue()
    for secret in [key, token, token.split(".")[1], TEST_JWT_SECRET, "upstream-bearer-token-9876",
                   "pg-password", "tok-secret-1", *encodings]:
        assert secret not in out
    records = as_json.records()
    messages = [r["message"] for r in records]
    assert messages[:3] == ["key [redacted]", "Authorization: Bearer [redacted]", "Authorization: Bearer [redacted]"]
    assert messages[3:9] == ["signed with [redacted]"] + ["ENCRYPTION_KEY=[redacted]"] * 5
    assert messages[9] == "connecting to postgresql://metamcp:[redacted]@db:5432/metamcp"
    assert messages[10] == "GET https://up.example/mcp?x=1&access_token=[redacted]&y=2 failed"
    assert "RuntimeError: upstream refused [redacted]" in records[11]["exc"]
    assert records[-1]["tool"] == "[redacted]" and records[-1]["key_name"] == "named [redacted]"


def test_a_bad_log_call_does_not_raise_into_the_caller(as_json: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)  # as in production: reported, not raised
    as_json.logger.info("%s and %s", "one")
    as_json.logger.info("next")
    assert [r["message"] for r in as_json.records()] == ["next"]


def test_what_is_not_a_secret_is_left_alone(as_json: Captured) -> None:
    plain = ["tool mcp_github_create_pull_request called", "key mcp_AbCd1234 (prefix shown by the API)",
             "Send 'Authorization: Bearer <token or API key>'", "a bearer credential", "http://127.0.0.1:8080/mcp",
             "Authorization: Bearer short"]
    for text in plain:
        as_json.logger.info("%s", text)
    assert [r["message"] for r in as_json.records()] == plain
    assert logs.redact(plain[0]) is plain[0]


def test_log_format_setting() -> None:
    base = {"JWT_SECRET": TEST_JWT_SECRET, "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY.hex(),
            "METAMCP_DATA_DIR": "/tmp/metamcp-test-logs"}
    assert load_settings(base).log_format == "text"
    assert load_settings({**base, "METAMCP_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError) as error:
        load_settings({**base, "METAMCP_LOG_FORMAT": "yaml"})
    assert error.value.setting == "METAMCP_LOG_FORMAT" and "text or json" in str(error.value)


def test_gunicorn_logconfig_sends_gunicorn_lines_through_our_handler() -> None:
    config = logs.gunicorn_logconfig(Settings(data_dir=Path("/tmp"), database_url=None, log_format="json"))
    assert config["disable_existing_loggers"] is False
    assert config["loggers"]["gunicorn.error"] == {"level": "INFO", "handlers": [], "propagate": True}
    assert config["loggers"]["gunicorn.access"]["handlers"] == []
    assert config["handlers"]["stderr"]["filters"] == ["context", "redact"]
    assert isinstance(config["formatters"]["metamcp"]["()"](log_format="json"), logs.JsonFormatter)
