"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`, server scenarios):
the 2025-11-25 suite (0.1.16) against the project's SDK test server directly, then through a
public endpoint of a live gunicorn in front of it; the 2026-07-28 suite (the 0.2.0 prerelease)
likewise. Skips when a runner cannot be installed (see tests/conformance.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .conformance import REVISION_2026, Runner, SuiteResult, Unavailable, install, parse
from .conftest import ROOT, Gunicorn, child_env, free_port, fresh_keys
from .upstreams import stop_process

SERVER = ROOT / "tests" / "servers" / "conformance_server.py"
SERVER_NAME = "conformance"

# The namespace the endpoint publishes: the upstream's names unchanged, as the suite calls them.
NAMESPACE: dict[str, Any] = {"name": "conformance", "naming": "original"}

# The one check the gateway meets another way than the SDK server: the transport lets a server
# answer a request with JSON or with an SSE stream; the gateway streams tools/call only and
# answers the rest as JSON, which this check reports as INFO ("SSE streaming is optional").
JSON_ANSWERS = {"server-sse-multiple-streams/server-sse-streams-functional": "SSE streaming is optional"}

# What a relayed request must bring back to the server: the suite's client answers these.
RELAYED_ANSWERS = {
    "tools-call-sampling/tools-call-sampling": "LLM response: This is a test response from the client",
    "tools-call-elicitation/tools-call-elicitation": '"username": "testuser"',
}

# The answers the 2026 suite's client sends in its retried input_required rounds, as the
# tools echo them (the SDK unsealed the round and handed them to the tool).
INPUT_ANSWERS_2026 = {
    "input-required-result-basic-elicitation/sep-2322-elicitation-complete": "Hello, Alice!",
    "input-required-result-basic-sampling/sep-2322-sampling-complete": "The capital of France is Paris.",
    "input-required-result-basic-list-roots/sep-2322-list-roots-complete": "file:///test/root",
    "input-required-result-request-state/sep-2322-request-state-complete": "state-ok",
}

# Checks of the 2026 suite that fail against the test server for reasons in the SDK or the
# runner themselves, by key with the reason. None with mcp 2.3.0 and 0.2.0-alpha.12.
FAILING_DIRECT_2026: dict[str, str] = {}


class ServerProcess:
    """tests/servers/conformance_server.py on a free loopback port; stopped by PID."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"conformance server exited {self.proc.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"conformance server not listening after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture(scope="session")
def runner() -> Runner:
    """Node 22 and the runner, installed once per test run (or reused from .cache/)."""
    try:
        return install()
    except Unavailable as e:
        pytest.skip(f"conformance runner unavailable: {e}")


@pytest.fixture(scope="session")
def runner_2026() -> Runner:
    """The prerelease runner, beside the stable one in its own cache folder."""
    try:
        return install(REVISION_2026)
    except Unavailable as e:
        pytest.skip(f"conformance runner {REVISION_2026.version} unavailable: {e}")


@pytest.fixture(scope="session")
def conformance_server() -> Iterator[ServerProcess]:
    server = ServerProcess()
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def direct(runner: Runner, conformance_server: ServerProcess,
           tmp_path_factory: pytest.TempPathFactory) -> SuiteResult:
    """The suite run once against the server itself."""
    return runner.server_suite(conformance_server.url, tmp_path_factory.mktemp("direct"))


@pytest.fixture(scope="session")
def direct_2026(runner_2026: Runner, conformance_server: ServerProcess,
                tmp_path_factory: pytest.TempPathFactory) -> SuiteResult:
    """The 2026-07-28 suite run once against the server itself."""
    return runner_2026.server_suite(conformance_server.url, tmp_path_factory.mktemp("direct-2026"))


class Gateway:
    def __init__(self, gunicorn: Gunicorn, admin_key: str) -> None:
        self.gunicorn = gunicorn
        self.admin_key = admin_key

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = requests.request(method, self.gunicorn.url + path, headers={"X-API-Key": self.admin_key},
                                 timeout=30, **kwargs)
        assert reply.status_code in (200, 201), f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json()


@pytest.fixture(scope="module")
def endpoint_url(database_url: str, conformance_server: ServerProcess,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live gunicorn (2 workers) with the server registered, in a namespace behind a public
    endpoint; yields the endpoint's MCP URL. Module-scoped: other modules truncate the tables."""
    key = fresh_keys(database_url, admin="admin")["admin"]
    env = child_env(DATABASE_URL=database_url, METAMCP_DATA_DIR=str(tmp_path_factory.mktemp("data")),
                    METAMCP_WORKERS="2")
    gunicorn = Gunicorn(env, free_port())
    try:
        gunicorn.wait_ready()
        gateway = Gateway(gunicorn, key)
        server = gateway.rest("POST", "/api/v1/mcp/servers", json={
            "name": SERVER_NAME, "transport": "streamable_http", "url": conformance_server.url})
        namespace = gateway.rest("POST", "/api/v1/namespaces", json=NAMESPACE)
        gateway.rest("PUT", f"/api/v1/namespaces/{namespace['id']}/servers/{server['id']}",
                     json={"status": "active"})
        gateway.rest("POST", "/api/v1/endpoints", json={
            "name": "conformance", "namespace_id": namespace["id"], "auth": {"api_key": False}})
        yield f"{gunicorn.url}/metamcp/conformance/mcp"
    finally:
        gunicorn.stop()
        Path(gunicorn.log.name).unlink(missing_ok=True)


def answered(result: SuiteResult, key: str) -> str:
    """The text of the tool result a relay scenario recorded."""
    details: Any = result.check(key).details
    return " ".join(c.get("text", "") for c in (details.get("result") or {}).get("content", []))


def json_answers(result: SuiteResult, key: str) -> bool:
    """`key` is a check the runner marks INFO because the gateway answered with JSON."""
    if key not in JSON_ANSWERS or key not in {c.key for c in result.checks}:
        return False
    check = result.check(key)
    return check.status == "INFO" and JSON_ANSWERS[key] in str(check.details.get("message", ""))


def test_suite_passes_direct(direct: SuiteResult) -> None:
    """Every check of the active suite passes against the server itself."""
    assert direct.counted(), direct.output
    assert not direct.failures(), f"{direct.score()} passed directly:\n{direct.report()}"
    for key, text in RELAYED_ANSWERS.items():  # the client's answers reached the server
        assert text in answered(direct, key), direct.check(key)
    print(f"conformance direct: {direct.score()} checks passed")


def test_suite_through_gateway(runner: Runner, direct: SuiteResult, endpoint_url: str,
                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every check that passes directly passes through a public endpoint of the gateway."""
    through = runner.server_suite(endpoint_url, tmp_path_factory.mktemp("gateway"))
    print(f"conformance through the gateway: {through.score()} checks passed "
          f"(direct {direct.score()})\n{through.report()}")
    lost = sorted(key for key in direct.passed() - through.passed() if not json_answers(through, key))
    assert not lost, (f"{len(lost)} checks pass directly but not through the gateway "
                      f"({through.score()} vs {direct.score()}):\n{through.report()}")
    for key, text in RELAYED_ANSWERS.items():
        assert text in answered(through, key), through.check(key)


def test_suite_2026_passes_direct(direct_2026: SuiteResult) -> None:
    """Every check of the 2026-07-28 suite passes against the server itself, but those the
    SDK or the runner fail by themselves (FAILING_DIRECT_2026)."""
    scenarios = {c.scenario for c in direct_2026.checks}
    assert {"server-stateless", "caching", "input-required-result-multi-round"} <= scenarios, direct_2026.output
    failures = direct_2026.failures()
    assert set(failures) == set(FAILING_DIRECT_2026), (
        f"{direct_2026.score()} passed directly, expected to fail only {sorted(FAILING_DIRECT_2026)}:\n"
        f"{direct_2026.report()}")
    for key, text in INPUT_ANSWERS_2026.items():  # the retried round's answers reached the tool
        assert text in answered(direct_2026, key), direct_2026.check(key)
    print(f"conformance 2026-07-28 direct: {direct_2026.score()} checks passed")


def test_suite_2026_through_gateway(runner_2026: Runner, direct_2026: SuiteResult, endpoint_url: str,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every check of the 2026-07-28 suite that passes directly passes through a public
    endpoint of the gateway."""
    through = runner_2026.server_suite(endpoint_url, tmp_path_factory.mktemp("gateway-2026"))
    print(f"conformance 2026-07-28 through the gateway: {through.score()} checks passed "
          f"(direct {direct_2026.score()})\n{through.report()}")
    lost = sorted(key for key in direct_2026.passed() - through.passed() if not json_answers(through, key))
    assert not lost, (f"{len(lost)} checks pass directly but not through the gateway "
                      f"({through.score()} vs {direct_2026.score()}):\n" + "\n".join(lost) + f"\n{through.report()}")


def test_parse_reads_checks_and_counts_a_scenario_that_threw(tmp_path: Path) -> None:
    """checks.json per scenario, held against the summary; a scenario with none is one failure."""
    (tmp_path / "server-tools-list-2026-12-03T13-12-50-064Z").mkdir()
    (tmp_path / "server-tools-list-2026-12-03T13-12-50-064Z" / "checks.json").write_text(json.dumps(
        [{"id": "tools-list", "status": "SUCCESS"}, {"id": "note", "status": "INFO"}]))
    output = ("Running active suite (2 scenarios) against http://x/mcp\n"
              "Failed to run scenario ping: boom\n=== SUMMARY ===\n"
              "\u2713 tools-list: 1 passed, 0 failed\n\u2717 ping: 0 passed, 1 failed\n")
    result = parse(tmp_path, output, 1)
    assert result.score() == "1/2"
    assert result.passed() == {"tools-list/tools-list"}
    assert list(result.failures()) == ["ping/ping"] and "boom" in result.failures()["ping/ping"]
    with pytest.raises(AssertionError, match="exit code"):
        parse(tmp_path, output, 0)
    (tmp_path / "server-tools-list-2026-12-03T13-12-50-064Z" / "checks.json").write_text(json.dumps(
        [{"id": "probe", "status": "SUCCESS"}, {"id": "probe", "status": "FAILURE", "errorMessage": "no"},
         {"id": "tools-list", "status": "SUCCESS"}]))
    repeated = parse(tmp_path, output.replace("1 passed, 0 failed", "2 passed, 1 failed"), 1)
    assert repeated.score() == "2/4"  # every occurrence counts, as in the runner's total
    assert repeated.passed() == {"tools-list/tools-list"}  # a key passes when all its occurrences do
    assert repeated.failures() == {"tools-list/probe": "no", "ping/ping": repeated.failures()["ping/ping"]}
    with pytest.raises(AssertionError, match="not understood"):
        parse(tmp_path, output.replace("(2 scenarios)", "(3 scenarios)"), 1)
