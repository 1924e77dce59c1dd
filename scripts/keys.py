#!/usr/bin/env python3
"""Manage MetaMCP API keys against the database `make run` uses (embedded or DATABASE_URL).

Exit status: 0 on success, 1 on failure (message on stderr), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from metamcp import keys, repository
from metamcp.admin_data import common_options
from metamcp.authn import ADMIN, CLIENT, ROLES
from metamcp.db import CliError, Database, run_admin_command

#: The checkout this script belongs to: its `.env` and `.data` are the ones `make run` uses.
ROOT = Path(__file__).resolve().parent.parent


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _scope(row: dict[str, Any]) -> str:
    if not row["scoped"]:
        return "*"
    return ",".join(row["namespaces"]) or "-"


def _rate(row: dict[str, Any]) -> str:
    return "default" if row["rate_limit"] is None else f"{row['rate_limit']}/min"


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["id", "name", "key_prefix", "role", "is_active", "created_at", "last_used_at"]
    headers = ["ID", "NAME", "PREFIX", "ROLE", "ACTIVE", "CREATED", "LAST USED", "NAMESPACES", "RATE LIMIT"]
    cells = [[*(_format(row[c]) for c in columns), _scope(row), _rate(row)] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def emit(args: argparse.Namespace, rows: list[dict[str, Any]], plain_key: str | None = None) -> None:
    if args.json:
        data: Any = [dict(row) for row in rows]
        if plain_key is not None:
            data = {**data[0], "key": plain_key}
        elif args.command != "list":
            data = data[0]
        print(json.dumps(data, default=_json_default, indent=2))
        return
    if not rows:
        print("no keys")
        return
    print_table(rows)
    if plain_key is not None:
        print(f"\nAPI key (shown once, store it now):\n{plain_key}")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _require(row: dict[str, Any] | None, key_id: int) -> dict[str, Any]:
    if row is None:
        raise CliError(f"no key with id {key_id}")
    return row


def cmd_list(args: argparse.Namespace, db: Database) -> None:
    with db.transaction() as cur:
        emit(args, repository.list_keys(cur, include_inactive=args.include_inactive))


def cmd_create(args: argparse.Namespace, db: Database) -> None:
    # Without --role: an admin key (the seed's behaviour), or a client key when limited.
    role = args.role or (CLIENT if args.namespace is not None else ADMIN)
    with db.transaction() as cur:
        row, plain = keys.create(cur, args.name, role, args.namespace, args.rate_limit)
    emit(args, [row], plain)


def cmd_set(args: argparse.Namespace, db: Database) -> None:
    fields: dict[str, Any] = {}
    if args.role is not None:
        fields["role"] = args.role
    if args.rate_limit is not None:
        fields["rate_limit"] = None if args.rate_limit == "default" else int(args.rate_limit)
    if args.unscoped:
        fields["namespaces"] = None
    elif args.namespace is not None:
        fields["namespaces"] = args.namespace
    with db.transaction() as cur:
        row = keys.change(cur, args.id, fields)
    emit(args, [row])


def cmd_scope(args: argparse.Namespace, db: Database) -> None:
    with db.transaction() as cur:
        row = keys.change(cur, args.id, {"namespaces": None if args.unscoped else args.namespace})
    emit(args, [row])


def cmd_show(args: argparse.Namespace, db: Database) -> None:
    with db.transaction() as cur:
        emit(args, [_require(repository.get_key(cur, args.id), args.id)])


def _set_active(active: bool) -> Callable[[argparse.Namespace, Database], None]:
    def command(args: argparse.Namespace, db: Database) -> None:
        with db.transaction() as cur:
            _require(repository.get_key(cur, args.id), args.id)
            row = keys.set_active(cur, args.id, active)
        emit(args, [row])

    return command


def cmd_delete(args: argparse.Namespace, db: Database) -> None:
    with db.transaction() as cur:
        _require(repository.get_key(cur, args.id), args.id)
        row = keys.delete(cur, args.id)
    if args.json:
        print(json.dumps({"deleted": row["id"]}))
    else:
        print(f"deleted key {row['id']} ({row['name']})")


def cmd_rotate(args: argparse.Namespace, db: Database) -> None:
    with db.transaction() as cur:
        old = _require(repository.get_key(cur, args.id), args.id)
        keys.set_active(cur, args.id, False)
        row, plain = keys.create(cur, old["name"], old["role"], old["namespaces"] if old["scoped"] else None,
                                 old["rate_limit"])
    if not args.json:
        print(f"key {old['id']} is now inactive; its replacement:")
    emit(args, [row], plain)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rate_limit(text: str) -> str:
    return text if text == "default" else str(_positive(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keys.py", description="Manage MetaMCP API keys.", parents=[common_options(top=True)]
    )
    common = common_options(top=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[..., None], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, parents=[common])
        command.set_defaults(handler=handler)
        return command

    add("list", cmd_list, "list keys").add_argument(
        "--include-inactive", action="store_true", help="also list inactive keys"
    )
    create = add("create", cmd_create, "create a key and print it once")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--role", choices=ROLES,
                        help="admin: the admin API and MCP (can run commands on the host through stdio "
                             "servers); client: MCP only. Default: admin, or client with --namespace")
    create.add_argument("--namespace", action="append", metavar="NS",
                        help="limit the key to this namespace (name or id; repeat for more); "
                             "makes a client key when --role is absent")
    create.add_argument("--rate-limit", type=_positive, metavar="N",
                        help="requests per minute for this key (default: METAMCP_RATE_LIMIT)")
    change = add("set", cmd_set, "change the role, namespaces or rate limit of a key")
    change.add_argument("id", type=int, help="key id")
    change.add_argument("--role", choices=ROLES, help="admin or client (admin lifts a namespace limit)")
    change_scope = change.add_mutually_exclusive_group()
    change_scope.add_argument("--namespace", action="append", metavar="NS",
                              help="limit the key to this namespace (repeat for more; client keys only)")
    change_scope.add_argument("--unscoped", action="store_true", help="lift the namespace limit")
    change.add_argument("--rate-limit", type=_rate_limit, metavar="N|default",
                        help="requests per minute for this key, or 'default' for METAMCP_RATE_LIMIT")
    scope = add("scope", cmd_scope, "limit a key to namespaces (it becomes a client key), or lift the limit")
    scope.add_argument("id", type=int, help="key id")
    scope_choice = scope.add_mutually_exclusive_group(required=True)
    scope_choice.add_argument("--namespace", action="append", metavar="NS",
                              help="a namespace the key may reach (repeat for more)")
    scope_choice.add_argument("--unscoped", action="store_true", help="the key reaches everything")
    for name, handler, help_text in (
        ("show", cmd_show, "show one key"),
        ("activate", _set_active(True), "activate a key"),
        ("inactivate", _set_active(False), "inactivate a key (its JWTs stop working)"),
        ("rotate", cmd_rotate, "replace a key: new key printed once, old one inactive"),
    ):
        add(name, handler, help_text).add_argument("id", type=int, help="key id")
    delete = add("delete", cmd_delete, "delete a key for good")
    delete.add_argument("id", type=int, help="key id")
    delete.add_argument("--confirm", action="store_true", help="required: deletion cannot be undone")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "delete" and not args.confirm:
        print(f"keys.py: deleting key {args.id} cannot be undone; add --confirm to delete it", file=sys.stderr)
        return 2
    if args.command in ("create", "set") and args.role == ADMIN and args.namespace is not None:
        parser.error("--role admin cannot be combined with --namespace: admin keys reach everything; "
                     "limit a client key instead (--role client --namespace NS)")
    if args.command == "set" and not (args.role or args.namespace or args.unscoped or args.rate_limit):
        parser.error("set: give at least one of --role, --namespace, --unscoped, --rate-limit")
    return run_admin_command("keys.py", ROOT, lambda db, _settings: args.handler(args, db), init=args.init)


if __name__ == "__main__":
    sys.exit(main())
