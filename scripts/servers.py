#!/usr/bin/env python3
"""Import and export MetaMCP's servers as an MCP client config (`{"mcpServers": {...}}`).

    .venv/bin/python scripts/servers.py import claude_desktop_config.json [--partial]
    .venv/bin/python scripts/servers.py export [--include-secrets] > servers.json

Works on the database `make run` uses (embedded or DATABASE_URL). Exit status: 0 on
success, 1 on failure (message on stderr), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metamcp import client_config
from metamcp.admin_data import common_options
from metamcp.config import Settings
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
