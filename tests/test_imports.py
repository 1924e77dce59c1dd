"""Importing the protocol core loads neither Flask nor psycopg2 (metamcp/__init__.py is empty)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT

PURE = ("metamcp", "metamcp.errors", "metamcp.mcp.naming", "metamcp.mcp.protocol", "metamcp.mcp.jsonrpc",
        "metamcp.mcp.sse")


def test_protocol_core_imports_without_flask_or_psycopg2() -> None:
    script = (f"import sys\nimport {', '.join(PURE)}\n"
              "print(sorted(m for m in ('flask', 'flask_smorest', 'psycopg2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
