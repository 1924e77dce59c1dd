"""npm packages the tests run, installed once into a git-ignored cache inside the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .conftest import ROOT

CACHE = ROOT / ".cache"


def installed(package: str, version: str, folder: str) -> Path | None:
    """The package's folder, installed with npm into .cache/<folder> unless it is there already
    at this version; None when npm is missing or the install fails (no network)."""
    prefix = CACHE / folder
    home = prefix / "node_modules" / package
    manifest = home / "package.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("version") == version:
        return home
    npm = shutil.which("npm")
    if npm is None:
        return None
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                                 "--no-save", "--loglevel=error", "--fetch-retries=1",  # offline: fail fast
                                 f"{package}@{version}"],
                                capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0 or not manifest.is_file():
        return None
    return home
