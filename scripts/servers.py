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

import psycopg2

from metamcp import client_config
from metamcp.config import ConfigError
from metamcp.crypto import SecretBox
from metamcp.db import open_database
from metamcp.errors import MetaMCPError
from metamcp.servers import ServerRegistry
from metamcp.stdio_policy import StdioPolicy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servers.py", description="Import or export MCP servers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    importing = sub.add_parser("import", help="create or update servers from a client config file")
    importing.add_argument("file", type=Path, help="a JSON file with an mcpServers object ('-' for stdin)")
    importing.add_argument("--partial", action="store_true",
                           help="import the valid entries even when some are invalid")
    exporting = sub.add_parser("export", help="print every server as a client config")
    exporting.add_argument("--include-secrets", action="store_true",
                           help="print secrets in clear instead of masked")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        document = None
        if args.command == "import":
            text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
            document = json.loads(text)
        with open_database() as (db, settings):
            registry = ServerRegistry(db, SecretBox(settings.encryption_key), settings.upstream_policy,
                                      StdioPolicy.from_settings(settings))
            if args.command == "import":
                output = client_config.import_servers(registry, document, partial=args.partial)
            else:
                output = client_config.export_servers(registry, include_secrets=args.include_secrets)
    except OSError as e:
        print(f"servers.py: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as e:
        print(f"servers.py: {args.file} is not JSON: {e.msg} (line {e.lineno})", file=sys.stderr)
        return 1
    except MetaMCPError as e:
        details = f": {json.dumps(e.details)}" if e.details else ""
        print(f"servers.py: {e.message}{details}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"servers.py: {e}", file=sys.stderr)
        return 1
    except psycopg2.Error as e:
        print(f"servers.py: database error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
