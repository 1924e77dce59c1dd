#!/usr/bin/env python3
"""Import and export MetaMCP's servers as an MCP client config (`{"mcpServers": {...}}`).

    .venv/bin/python scripts/servers.py import claude_desktop_config.json [--partial]
    .venv/bin/python scripts/servers.py export [--include-secrets] > servers.json
    .venv/bin/python scripts/servers.py reseal --old-key-file old.key   # after changing ENCRYPTION_KEY

Works on the database `make run` uses (embedded or DATABASE_URL). Exit status: 0 on
success, 1 on failure (message on stderr), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from metamcp import client_config, reseal
from metamcp.admin_data import common_options
from metamcp.config import ConfigError, Settings, parse_encryption_key
from metamcp.crypto import SecretBox
from metamcp.db import Database, run_admin_command
from metamcp.servers import ServerRegistry
from metamcp.stdio_policy import StdioPolicy

#: The checkout this script belongs to: its `.env` and `.data` are the ones `make run` uses.
ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servers.py", description="Import or export MCP servers.",
                                     parents=[common_options(top=True, with_json=False)])
    common = common_options(top=False, with_json=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    importing = sub.add_parser("import", help="create or update servers from a client config file",
                               parents=[common])
    importing.add_argument("file", type=Path, help="a JSON file with an mcpServers object ('-' for stdin)")
    importing.add_argument("--partial", action="store_true",
                           help="import the valid entries even when some are invalid")
    exporting = sub.add_parser("export", help="print every server as a client config", parents=[common])
    exporting.add_argument("--include-secrets", action="store_true",
                           help="print secrets in clear instead of masked")
    resealing = sub.add_parser(
        "reseal", help="re-encrypt every stored secret from an old ENCRYPTION_KEY to the current one",
        description="Re-encrypt every stored secret (bearer tokens, header and env values) from the "
                    "old key to the current ENCRYPTION_KEY, in one transaction: all or nothing. "
                    f"Give the old key with --old-key, --old-key-file or ${OLD_KEY_ENV} (the last "
                    "two keep it out of the shell history).")
    old = resealing.add_mutually_exclusive_group()
    old.add_argument("--old-key", metavar="KEY", help="the previous ENCRYPTION_KEY (base64 or hex)")
    old.add_argument("--old-key-file", metavar="FILE", type=Path,
                     help="a file holding the previous ENCRYPTION_KEY")
    return parser


#: Where `reseal` reads the old key when no option gives it.
OLD_KEY_ENV = "METAMCP_OLD_ENCRYPTION_KEY"


def _old_key(args: argparse.Namespace) -> bytes:
    """The old key from --old-key, --old-key-file or $METAMCP_OLD_ENCRYPTION_KEY; ConfigError
    when none gives one or it is not a valid key (its value is never printed)."""
    if args.old_key_file is not None:
        try:
            text = args.old_key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError("--old-key-file", f"cannot read {args.old_key_file}: {e.strerror}") from None
    else:
        text = args.old_key or os.environ.get(OLD_KEY_ENV, "")
    if not text:
        raise ConfigError("reseal", f"needs the old key: --old-key-file FILE, --old-key KEY or ${OLD_KEY_ENV}")
    try:
        return parse_encryption_key(text)
    except ConfigError as e:
        raise ConfigError("the old key", str(e).partition(": ")[2]) from None


def run_reseal(args: argparse.Namespace) -> int:
    """`reseal`: every secret under the current key; counts per server on stdout, never secrets."""
    try:
        old = SecretBox(_old_key(args))
    except ConfigError as e:
        print(f"servers.py: {e}", file=sys.stderr)
        return 1

    def command(db: Database, settings: Settings) -> None:
        report = reseal.reseal(db, old, SecretBox(settings.encryption_key))
        for entry in report:
            print(f"{entry.name}: {entry.moved} secret(s) resealed, {entry.current} already under the current key")
        servers = sum(1 for entry in report if entry.moved)
        print(f"resealed {sum(entry.moved for entry in report)} secret(s) of {servers} server(s)")

    return run_admin_command("servers.py", ROOT, command, init=args.init)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "reseal":
        return run_reseal(args)
    document = None
    if args.command == "import":
        try:
            text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
            document = json.loads(text)
        except OSError as e:
            print(f"servers.py: cannot read {args.file}: {e.strerror}", file=sys.stderr)
            return 1
        except json.JSONDecodeError as e:
            print(f"servers.py: {args.file} is not JSON: {e.msg} (line {e.lineno})", file=sys.stderr)
            return 1
    output: dict[str, Any] = {}

    def command(db: Database, settings: Settings) -> None:
        registry = ServerRegistry(db, SecretBox(settings.encryption_key), settings.upstream_policy,
                                  StdioPolicy.from_settings(settings))
        if args.command == "import":
            output.update(client_config.import_servers(registry, document, partial=args.partial,
                                                       partial_hint="--partial"))
        else:
            output.update(client_config.export_servers(registry, include_secrets=args.include_secrets))

    status = run_admin_command("servers.py", ROOT, command, init=args.init)
    if status == 0:
        print(json.dumps(output, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
