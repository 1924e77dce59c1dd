"""Where the admin scripts (scripts/keys.py, servers.py, audit.py) find the project's data.

The gateway reads `.env` and `./.data` relative to its working directory, which `make run`
sets to the checkout. The scripts may be run from any folder, so they anchor both to the
project root (the checkout holding `scripts/`) instead: run from elsewhere they must reach
the same database, never make a second one there by accident.

Precedence: the process environment, then the project root's `.env`; METAMCP_DATA_DIR
defaults to `<root>/.data`. A relative METAMCP_DATA_DIR from the root's `.env` is relative
to the root (as it is for `make run`); one from the process environment to the working
directory.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metamcp.config import GENERATED_SECRETS, SECRETS_FILE, read_env_file

logger = logging.getLogger(__name__)

DATA_DIR = "METAMCP_DATA_DIR"


def script_environment(root: Path, environ: Mapping[str, str], dotenv: Mapping[str, str]) -> dict[str, str]:
    """The settings a script runs with (pure): `dotenv` is the root's `.env`, `environ` the process's."""
    values = dict(dotenv)
    from_file = dotenv.get(DATA_DIR)
    if from_file:
        values[DATA_DIR] = str(root / Path(from_file).expanduser())  # an absolute one stays as it is
    values.update(environ)
    if not values.get(DATA_DIR):
        values[DATA_DIR] = str(root / ".data")
    return values


def load_script_environment(root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """script_environment with the root's `.env` read from disk."""
    return script_environment(root, environ, read_env_file(root / ".env"))


def would_create(values: Mapping[str, str]) -> list[str]:
    """What opening the database with these settings would create from nothing: an embedded
    database and its secrets. Empty with DATABASE_URL (secrets beside a server the operator
    runs are generated as before) or when the data directory holds both already."""
    if values.get("DATABASE_URL"):
        return []
    data_dir = Path(values[DATA_DIR]).expanduser().resolve()
    missing = []
    if not (data_dir / "postgres" / "PG_VERSION").exists():
        missing.append(f"an embedded PostgreSQL in {data_dir / 'postgres'}")
    stored = read_env_file(data_dir / SECRETS_FILE)
    if any(not values.get(name) and name not in stored for name in GENERATED_SECRETS):
        missing.append(f"new secrets in {data_dir / SECRETS_FILE}")
    return missing


def common_options(top: bool, with_json: bool = True) -> argparse.ArgumentParser:
    """The options a script takes before or after its subcommand (argparse parents).

    The subcommand's copy defaults to SUPPRESS: with a plain default, argparse would reset
    `--json` given before the subcommand (`keys.py --json list`) to False.
    """
    common = argparse.ArgumentParser(add_help=False)
    default: Any = False if top else argparse.SUPPRESS
    if with_json:
        common.add_argument("--json", action="store_true", default=default, help="print JSON instead of a table")
    common.add_argument("--init", action="store_true", default=default,
                        help="create the embedded database and secrets if there are none yet "
                             "(otherwise the command refuses rather than start an empty database)")
    return common
