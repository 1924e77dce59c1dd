"""The README keeps its word: the ```sh blocks of "First steps", "Connect an MCP client" and the
namespace walkthrough run in order as one script against a live gateway, as a new user would
(variables set by the blocks themselves, the example upstreams they start), and so do those of
"Operating" and "Deploying" (against a gateway whose upstream has served a call); each prints
what the README says. Blocks that need a Docker engine or a cluster are indented, not ```sh,
and the README says they were not run here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import ROOT, Gunicorn, child_env, free_port, fresh_keys
from .upstreams import UpstreamProcess

SECTIONS = ("Operating", "Deploying")
ACCEPT = "application/json, text/event-stream"


FIRST_HOUR = ("First steps", "Connect an MCP client", "Namespaces, overrides and endpoints")


def shell_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.DOTALL | re.MULTILINE)


def started(database_url: str, data: Path) -> Gunicorn:
    """A gateway as `make run` starts it, on an empty database."""
    fresh_keys(database_url)
    server = Gunicorn(child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(data), METAMCP_WORKERS="2"),
                      free_port())
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def new_gateway(database_url: str, tmp_path: Path) -> Iterator[Gunicorn]:
    server = started(database_url, tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    upstream = UpstreamProcess("ops").start()
    server = started(database_url, tmp_path_factory.mktemp("data"))
    try:
        key = fresh_keys(database_url, setup="admin")["setup"]
        headers = {"X-API-Key": key}
        requests.post(server.url + "/api/v1/mcp/servers", headers=headers, timeout=30, json={
            "name": "ops", "transport": "streamable_http", "url": upstream.url}).raise_for_status()
        mcp = {**headers, "Accept": ACCEPT, "Content-Type": "application/json"}
        init = requests.post(server.url + "/mcp", headers=mcp, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        mcp["Mcp-Session-Id"] = init.headers["Mcp-Session-Id"]
        call = requests.post(server.url + "/mcp", headers=mcp, timeout=30, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "ops__echo", "arguments": {"message": "hi"}}})
        assert "ops: hi" in call.text
        deadline = time.monotonic() + 10  # calls reach the audit log in batches, about every 0.5 s
        while not requests.get(server.url + "/api/v1/audit?kind=call", headers=headers, timeout=30).json()["entries"]:
            assert time.monotonic() < deadline, "the call never reached the audit log"
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
        upstream.stop()


def test_the_blocks_are_there() -> None:
    assert len(shell_blocks("Operating")) >= 3 and len(shell_blocks("Deploying")) >= 2
    assert all(shell_blocks(section) for section in FIRST_HOUR)


def run_script(script: str, gateway: Gunicorn, **replace: str) -> subprocess.CompletedProcess[str]:
    """The blocks as one bash script, on the test's ports and interpreter; the processes it
    starts in the background are stopped (by PID) when it ends."""
    script = script.replace("12009", str(gateway.port)).replace(".venv/bin/python", sys.executable)
    for old, new in replace.items():
        script = script.replace(old, new)
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=180, check=False,
                         # The gateway is not on 12009 here: "another address" in the README's words.
                         env={**gateway.env, "METAMCP_PORT": str(gateway.port), "METAMCP_URL": gateway.url})
    return ran


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None,
                    reason="the README's examples use curl and jq")
def test_the_first_hour_runs_as_written(new_gateway: Gunicorn) -> None:
    script = "\n".join(block for section in FIRST_HOUR for block in shell_blocks(section))
    ran = run_script(script, new_gateway, **{"3001": str(free_port()), "3002": str(free_port())})
    output = ran.stdout
    # stderr is the example servers' log, their stop included; the commands' answers are stdout.
    assert ran.returncode == 0, (output, ran.stderr)
    assert "FAIL" not in output and '"error"' not in output, output
    assert '"servers"' in output  # the servers list, with the JWT
    assert "all steps passed" in output, output  # scripts/test_client.py
    assert '"name": "files__list_files"' in output  # the namespace's tools
    assert '"content"' in output.rsplit('"namespace_id"', 1)[1]  # the renamed tool, called over REST


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None,
                    reason="the README's examples use curl and jq")
def test_operating_and_deploying_commands_run_as_written(gateway: Gunicorn) -> None:
    script = "\n".join(block for section in SECTIONS for block in shell_blocks(section))
    if shutil.which("kubectl") is None:
        script = "\n".join(line for line in script.splitlines() if not line.startswith("kubectl"))
    ran = run_script(script, gateway)  # the README's gateway is `make run`'s, on 12009
    output = ran.stdout
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert "Traceback" not in ran.stderr and "error" not in ran.stderr.lower(), ran.stderr
    # What the README says each prints.
    for part in ("gateway", "upstream"):
        assert f'metamcp_tool_call_{part}_seconds_count{{server="ops",tool="echo"}} 1.0' in output, output
    first_json = output[output.index("\n{") + 1:]
    entry = json.JSONDecoder().raw_decode(first_json)[0]
    # The newest successful call (the setup's, unless a writer of an earlier test was late).
    assert (entry["kind"], entry["action"], entry["outcome"]) == ("call", "tools/call", "ok"), entry
    assert {"key_name", "server", "target", "duration_ms", "upstream_ms", "request_id"} <= entry.keys()
    assert '"by": "tool"' in output and '"p95_ms"' in output
    assert re.search(r"call +setup \(\d+\) +tools/call +ops +ops__echo +ok", output), output  # tail
    assert re.search(r"admin +cli +key.create", output), output  # query --kind admin: the README's own key
    assert re.search(r"^KEY +NAME +CALLS", output, re.MULTILINE), output
    if shutil.which("kubectl") is not None:
        kinds = set(re.findall(r"^kind: (\w+)$", output, re.MULTILINE))
        assert {"Deployment", "Service", "Secret", "ConfigMap", "PodDisruptionBudget"} <= kinds
