#!/usr/bin/env python3
"""Read MetaMCP's audit log from the database `make run` uses (embedded or DATABASE_URL).

    .venv/bin/python scripts/audit.py tail [-n 20] [--follow [--interval 1]]
    .venv/bin/python scripts/audit.py query [--key ID] [--server S] [--tool T] [--outcome O]
                                            [--kind call|admin] [--since 1h] [--until ISO] [--limit N]
    .venv/bin/python scripts/audit.py usage --by key|server|tool [--since 7d] [--until ISO]

Times are ISO 8601 (UTC when no zone is given) or an age such as 30m, 12h, 7d. Every command
prints a table, or JSON with --json (one object per line for `tail --follow`). Exit status: 0 on
success (Ctrl-C ends --follow with 0), 1 on failure (message on stderr), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from metamcp import audit_query, audit_repository
from metamcp.admin_data import common_options
from metamcp.audit_query import Filters
from metamcp.db import CliError, Database, run_admin_command

#: The checkout this script belongs to: its `.env` and `.data` are the ones `make run` uses.
ROOT = Path(__file__).resolve().parent.parent

#: Columns of the record table: (header, how a row shows it).
RECORD_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("AT", lambda r: r["at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]),
    ("KIND", lambda r: r["kind"]),
    ("WHO", lambda r: f"{r['key_name']} ({r['key_id']})" if r["key_id"] is not None else r["actor"]),
    ("ACTION", lambda r: r["action"]),
    ("SERVER", lambda r: r["server"]),
    ("TARGET", lambda r: r["target"]),
    ("OUTCOME", lambda r: r["outcome"] if r["error_code"] is None else f"{r['outcome']} {r['error_code']}"),
    ("MS", lambda r: None if r["duration_ms"] is None else f"{r['duration_ms']:.1f}"),
    ("BYTES", lambda r: r["bytes"]),
    ("PID", lambda r: r["pid"]),
]
USAGE_COLUMNS = {
    "key": [("KEY", "key_id"), ("NAME", "key_name")],
    "server": [("SERVER", "server")],
    "tool": [("METHOD", "method"), ("SERVER", "server"), ("TOOL", "tool")],
}
USAGE_FIGURES = [("CALLS", "calls"), ("ERRORS", "errors"), ("TOOL ERRORS", "tool_errors"),
                 ("P50 MS", "p50_ms"), ("P95 MS", "p95_ms")]
#: Seconds --follow may wait between polls.
INTERVAL_RANGE = (0.2, 60.0)
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def print_table(headers: list[str], cells: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def record_cells(rows: Iterable[dict[str, Any]]) -> list[list[str]]:
    return [[_cell(show(row)) for _, show in RECORD_COLUMNS] for row in rows]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def dumps(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, default=_json_default, indent=indent)


def moment(text: str) -> datetime:
    """An ISO 8601 time (UTC without a zone) or an age before now (30m, 12h, 7d)."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return datetime.now(UTC) - timedelta(**{_UNITS[age.group(2)]: float(age.group(1))})
    try:
        return audit_query.utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an ISO 8601 time nor an age like 12h or 7d") from None


def _bounded(low: float, high: float, parse: type[int] | type[float]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return check


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(key_id=getattr(args, "key", None), server=getattr(args, "server", None),
                   tool=getattr(args, "tool", None), outcome=getattr(args, "outcome", None),
                   kind=getattr(args, "kind", None), since=args.since, until=args.until)


def cmd_query(args: argparse.Namespace, db: Database) -> None:
    try:
        rows, cursor = audit_query.page(db, _filters(args), args.limit, args.cursor)
    except ValueError as e:
        raise CliError(f"--cursor: {e}") from None
    if args.json:
        print(dumps({"entries": rows, "next_cursor": cursor}))
        return
    print_table([h for h, _ in RECORD_COLUMNS], record_cells(rows))
    if cursor:
        print(f"\nmore: --cursor {cursor}")


def cmd_tail(args: argparse.Namespace, db: Database) -> None:
    rows, _ = audit_query.page(db, Filters(), args.lines)
    rows.reverse()  # oldest first, as a log reads
    last_id = max((row["id"] for row in rows), default=0)
    if not args.follow:
        if args.json:
            print(dumps(rows))
        else:
            print_table([h for h, _ in RECORD_COLUMNS], record_cells(rows))
        return
    emit_lines(args, rows, header=True)
    try:
        while True:
            time.sleep(args.interval)
            with db.transaction() as cur:
                rows = audit_repository.newer(cur, last_id, 1000)
            if rows:
                last_id = rows[-1]["id"]
                emit_lines(args, rows, header=False)
    except KeyboardInterrupt:
        return


def emit_lines(args: argparse.Namespace, rows: list[dict[str, Any]], header: bool) -> None:
    """--follow: one line per record as it comes (fixed widths, no re-layout)."""
    for row in rows:
        if args.json:
            print(dumps(row, indent=None))
        else:
            print("  ".join(record_cells([row])[0]))
    if header and not args.json and not rows:
        print("waiting for records (Ctrl-C ends)")
    sys.stdout.flush()


def cmd_usage(args: argparse.Namespace, db: Database) -> None:
    groups = audit_query.usage(db, args.by, _filters(args))
    if args.json:
        print(dumps({"by": args.by, "groups": groups}))
        return
    columns = USAGE_COLUMNS[args.by] + USAGE_FIGURES
    print_table([h for h, _ in columns], [[_cell(group[c]) for _, c in columns] for group in groups])


def build_parser() -> argparse.ArgumentParser:
    common = common_options(top=False)
    period = argparse.ArgumentParser(add_help=False)
    period.add_argument("--since", type=moment, help="from this time (ISO 8601) or age (30m, 12h, 7d)")
    period.add_argument("--until", type=moment, help="before this time (ISO 8601) or age")
    parser = argparse.ArgumentParser(prog="audit.py", description="Read the MetaMCP audit log.",
                                     parents=[common_options(top=True)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tail = sub.add_parser("tail", help="the newest records, oldest first", parents=[common])
    tail.set_defaults(handler=cmd_tail, since=None, until=None)
    tail.add_argument("-n", "--lines", type=_bounded(1, 1000, int), default=20, help="how many (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records (Ctrl-C ends)")
    tail.add_argument("--interval", type=_bounded(*INTERVAL_RANGE, float), default=1.0,
                      help="seconds between polls with --follow (default 1)")

    query = sub.add_parser("query", help="records matching filters, newest first", parents=[common, period])
    query.set_defaults(handler=cmd_query)
    query.add_argument("--key", type=_bounded(1, 2**31 - 1, int), help="the API key's id")
    query.add_argument("--server", help="the upstream server's name")
    query.add_argument("--tool", help="the tool or prompt as the client named it, or the URI")
    query.add_argument("--outcome", choices=("ok", "tool_error", "error"))
    query.add_argument("--kind", choices=("call", "admin"))
    query.add_argument("--limit", type=_bounded(1, 1000, int), default=100, help="records per page (default 100)")
    query.add_argument("--cursor", help="the page after this one (printed after a full page)")

    usage = sub.add_parser("usage", help="calls, errors, p50/p95 duration per group", parents=[common, period])
    usage.set_defaults(handler=cmd_usage)
    usage.add_argument("--by", required=True, choices=audit_query.USAGE_BY)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_admin_command("audit.py", ROOT, lambda db, _settings: args.handler(args, db), init=args.init)
    except KeyboardInterrupt:  # --follow ends with Ctrl-C
        return 0


if __name__ == "__main__":
    sys.exit(main())
