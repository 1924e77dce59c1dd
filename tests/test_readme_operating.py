"""The README's "Operating" and "Deploying" sections keep their word: every ```sh block in them
runs, in order and as one script, against a live gateway (gunicorn, real PostgreSQL, a real
upstream that has served a call), and prints what the README says it prints. The blocks that
need a Docker engine or a cluster are indented, not ```sh, and the README says they were not
run here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from .conftest import ROOT, Gunicorn, child_env, free_port, fresh_keys
from .upstreams import UpstreamProcess

SECTIONS = ("Operating", "Deploying")
ACCEPT = "application/json, text/event-stream"


def shell_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    upstream = UpstreamProcess("ops").start()
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="2")
    server = Gunicorn(env, free_port())
    try:
        server.wait_ready()
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


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None,
                    reason="the README's examples use curl and jq")
def test_operating_and_deploying_commands_run_as_written(gateway: Gunicorn) -> None:
    script = "\n".join(block for section in SECTIONS for block in shell_blocks(section))
    if shutil.which("kubectl") is None:
        script = "\n".join(line for line in script.splitlines() if not line.startswith("kubectl"))
    # The README's gateway is `make run`'s, on 12009 in this checkout's virtualenv.
    script = script.replace("12009", str(gateway.port)).replace(".venv/bin/python", sys.executable)
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**gateway.env, "METAMCP_PORT": str(gateway.port)}, check=False)
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
