"""The deployment files, checked without Docker or Kubernetes (neither runs on the test machines;
hadolint and kubeconform are not installed either): the YAML parses, the manifests hold what a
scaled-out deployment needs, every variable they set is one the gateway reads, the build context
leaves secrets out, the image is multi-stage and non-root with a probe on the configured port,
the lock pins what setup.cfg asks for; and, against a real PostgreSQL, two processes migrating
one fresh database at the same moment leave the schema one process leaves.
"""

from __future__ import annotations

import ast
import configparser
import multiprocessing
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from metamcp import db, healthcheck
from metamcp.config import ConfigError, load_settings
from metamcp.db import migrate, migration_ids
from tests.conftest import ROOT, scratch_database

KUBE = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

#: The names metamcp/config.py reads, as the string literals naming them.
GATEWAY_NAME = re.compile(r"^(METAMCP_[A-Z_]+|PROMETHEUS_MULTIPROC_DIR|DATABASE_URL|JWT_SECRET|JWT_LIFETIME_SECONDS|ENCRYPTION_KEY)$")
#: The postgres image's own variables (the compose service beside the gateway).
POSTGRES_VARIABLES = frozenset({"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"})
#: Python's and pip's, set by the Dockerfile for the interpreter, not for the gateway.
RUNTIME_VARIABLES = frozenset({
    "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
})
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.M)
COMPOSE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def gateway_variables() -> set[str]:
    tree = ast.parse((ROOT / "metamcp" / "config.py").read_text(encoding="utf-8"))
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and GATEWAY_NAME.match(node.value)}


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def manifests() -> list[dict[str, Any]]:
    kustomization = load_yaml(KUBE / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in load_yaml(KUBE / name)]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def container_port() -> tuple[str, int]:
    ports = container()["ports"]
    assert len(ports) == 1
    return ports[0]["name"], ports[0]["containerPort"]


def compose() -> dict[str, Any]:
    result: dict[str, Any] = load_yaml(COMPOSE)[0]
    return result


def compose_references() -> set[str]:
    """The ${VARIABLE}s compose substitutes: in the file's values, not its comments."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            found.update(COMPOSE_REFERENCE.findall(node))

    walk(compose())
    return found


def env_example_names() -> set[str]:
    return set(ENV_LINE.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))


def test_the_gateway_variables_are_found_in_config_py() -> None:
    names = gateway_variables()
    assert {"DATABASE_URL", "JWT_SECRET", "ENCRYPTION_KEY", "METAMCP_PORT", "METAMCP_HOST",
            "METAMCP_DATA_DIR", "METAMCP_WORKERS"} <= names
    assert len(names) >= 30


def test_every_deployment_yaml_parses() -> None:
    paths = sorted(KUBE.glob("*.yaml")) + [COMPOSE]
    assert len(paths) >= 6
    for path in paths:
        assert load_yaml(path), path
    listed = set(load_yaml(KUBE / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    for doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert "namespace" not in doc["metadata"], "the manifests are namespace-agnostic"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests_offline() -> None:
    """`kubectl kustomize deploy/kubernetes` (what `kubectl apply -k` sends): no cluster needed."""
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True,
                              timeout=60, check=False)
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc)
    assert kinds == sorted(doc["kind"] for doc in manifests())


def test_kubernetes_has_two_replicas_a_service_a_secret_and_a_disruption_budget() -> None:
    kinds = {doc["kind"] for doc in manifests()}
    assert {"Deployment", "Service", "Secret", "ConfigMap", "PodDisruptionBudget"} <= kinds
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"].get("sessionAffinity", "None") == "None"  # any replica serves any session
    name, _ = container_port()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [name]
    secret = one("Secret")
    assert {"JWT_SECRET", "ENCRYPTION_KEY", "DATABASE_URL"} <= secret["stringData"].keys()
    assert container()["envFrom"] == [{"configMapRef": {"name": one("ConfigMap")["metadata"]["name"]}},
                                      {"secretRef": {"name": secret["metadata"]["name"]}}]


def test_the_secret_placeholders_are_refused_by_the_gateway() -> None:
    """Applying the template unfilled stops the pods instead of running on known secrets."""
    secret = one("Secret")["stringData"]
    for name in ("JWT_SECRET", "ENCRYPTION_KEY", "DATABASE_URL"):
        env = {"JWT_SECRET": "j" * 40, "ENCRYPTION_KEY": "00" * 32, "DATABASE_URL": "postgresql://x/y",
               "METAMCP_DATA_DIR": "/nonexistent", name: secret[name]}
        with pytest.raises(ConfigError) as raised:
            load_settings(env)
        assert raised.value.setting == name


def test_probes_ask_ready_and_health_on_the_container_port() -> None:
    name, number = container_port()
    spec = container()
    assert spec["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/health"
    assert spec["startupProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["port"] in (name, number), probe
    # The gateway listens where the probes knock: METAMCP_PORT of the ConfigMap.
    config = one("ConfigMap")["data"]
    assert int(config["METAMCP_PORT"]) == number
    assert config["METAMCP_HOST"] == "0.0.0.0"
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == number


def test_the_pod_runs_unprivileged_on_a_read_only_root() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["enableServiceLinks"] is False  # no injected METAMCP_PORT=tcp://... for the Service
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert one("ConfigMap")["data"]["METAMCP_DATA_DIR"] in mounts
    assert "/tmp" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    # The kubelet waits for preStop plus the gateway's graceful stop (about 3 s) before killing.
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    sleep = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(pre_stop)).group(1))  # type: ignore[union-attr]
    assert sleep + 3 < pod["terminationGracePeriodSeconds"] <= 60


def test_the_manifests_set_only_variables_the_gateway_reads() -> None:
    names = set(one("ConfigMap")["data"]) | set(one("Secret")["stringData"])
    names |= {item["name"] for item in container().get("env", [])}
    unknown = names - gateway_variables()
    assert not unknown, f"not read by the gateway: {sorted(unknown)}"


def test_compose_sets_only_known_variables_and_env_example_lists_every_one() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "metamcp"}
    assert set(services["postgres"]["environment"]) <= POSTGRES_VARIABLES
    unknown = set(services["metamcp"]["environment"]) - gateway_variables()
    assert not unknown, f"not read by the gateway: {sorted(unknown)}"
    used = compose_references()
    assert "POSTGRES_PASSWORD" in used
    missing = used - env_example_names()
    assert not missing, f"compose uses but .env.example does not list: {sorted(missing)}"


def test_compose_waits_for_a_healthy_database_and_probes_readiness() -> None:
    services = compose()["services"]
    assert services["metamcp"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("postgres", "metamcp"):
        assert services[name]["healthcheck"]["test"], name
    probe = services["metamcp"]["healthcheck"]["test"]
    assert probe == ["CMD", "python", "-m", "metamcp.healthcheck", "/ready"]
    environment = services["metamcp"]["environment"]
    assert environment["METAMCP_PORT"] == "${METAMCP_PORT:-12009}"
    assert services["metamcp"]["ports"] == ["127.0.0.1:${METAMCP_PORT:-12009}:${METAMCP_PORT:-12009}"]


def test_env_example_lists_every_setting_and_nothing_unknown() -> None:
    listed = env_example_names()
    missing = gateway_variables() - listed
    assert not missing, f".env.example lacks: {sorted(missing)}"
    compose_used = compose_references()
    unknown = listed - gateway_variables() - compose_used
    assert not unknown, f".env.example names what nothing reads: {sorted(unknown)}"


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split at each FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = [[]]
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages[1:]


def test_the_image_is_built_in_stages_and_runs_unprivileged() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    builder, final = "\n".join(stages[0]), stages[-1]
    assert re.search(r"pip install --require-hashes .*-r \S*requirements\.lock", builder)
    assert re.search(r"pip install --no-deps [^&\n]* \.(?: |$)", builder, re.M)
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit()  # numeric: runAsNonRoot can verify it
    final_text = "\n".join(final)
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final_text)
    assert "COPY --from=builder" in final_text
    assert not re.search(r"^COPY (metamcp|migrations|setup\.cfg)", final_text, re.M)  # no sources
    assert final[-1] == 'CMD ["gunicorn", "-c", "python:metamcp.gunicorn_conf"]'


def test_the_healthcheck_asks_the_configured_port() -> None:
    final = dockerfile_stages()[-1]
    checks = [line for line in final if line.upper().startswith("HEALTHCHECK ")]
    assert len(checks) == 1
    assert "12009" not in checks[0]
    assert re.search(r'CMD \["python", "-m", "metamcp.healthcheck", "/health"\]', checks[0])


def test_dockerfile_env_names_only_known_variables() -> None:
    names: set[str] = set()
    for stage in dockerfile_stages():
        for line in stage:
            if line.upper().startswith("ENV "):
                names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line[4:]))
    assert {"METAMCP_PORT", "METAMCP_HOST", "METAMCP_DATA_DIR"} <= names
    unknown = names - gateway_variables() - RUNTIME_VARIABLES
    assert not unknown, f"not read by the gateway: {sorted(unknown)}"


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**` any folders, `*` and `?` within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i:close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """The last matching pattern decides; one matching a folder covers what is inside."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = dockerignore_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_the_build_context_leaves_state_and_secrets_out() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".venv", ".data", ".env", ".git"} <= set(patterns)
    for path in (".data/secrets.env", ".data/postgres/PG_VERSION", ".env", ".venv/bin/python", ".git/config",
                 "metamcp/__pycache__/app.cpython-311.pyc", "metamcp.egg-info/PKG-INFO", ".cache/x",
                 "tests/test_deploy.py", "node_modules/x/package.json", "deploy/.env"):
        assert dockerignored(path, patterns), path
    # What the Dockerfile copies stays in the context.
    copied = [src for stage in dockerfile_stages() for line in stage if line.startswith("COPY ")
              and "--from=" not in line for src in line.split()[1:-1]]
    assert "requirements.lock" in copied
    for source in copied:
        for path in [source] if (ROOT / source).is_file() else [
                str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")][:20]:
            assert not dockerignored(path, patterns), path
    assert not dockerignored(".env.example", patterns)


def lock_pins() -> dict[str, tuple[str, str]]:
    """name -> (version, the entry's text) of requirements.lock."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    pins: dict[str, tuple[str, str]] = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", entry)
        if match:
            pins[canonicalize_name(match.group(1))] = (match.group(2), entry)
    return pins


def install_requires() -> list[Requirement]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser["options"]["install_requires"].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]


def test_the_lock_pins_every_dependency_within_setup_cfg_ranges() -> None:
    pins = lock_pins()
    requirements = install_requires()
    assert len(requirements) >= 12
    assert "prometheus-client" in {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.lock lacks {name}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"requirements.lock pins {name}=={version}, setup.cfg asks {requirement.specifier}: run `make lock`"
    # --require-hashes: every pin carries its hashes; the build backend is pinned too.
    for pinned, (_, entry) in pins.items():
        assert "--hash=sha256:" in entry, pinned
    assert "setuptools" in pins
    header = (ROOT / "requirements.lock").read_text(encoding="utf-8")[:400]
    assert "#    make lock\n" in header  # the command that regenerates it (CUSTOM_COMPILE_COMMAND)
    assert re.search(r"^lock:", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)


class _Probes(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        status = {"/health": 200, "/ready": 503}.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probes)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_healthcheck_module_asks_the_configured_address(
        probe_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("METAMCP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METAMCP_HOST", "0.0.0.0")
    monkeypatch.setenv("METAMCP_PORT", str(probe_server))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # must not be used
    assert healthcheck.main(["/health"]) == 0
    assert healthcheck.main([]) == 0
    assert healthcheck.main(["/ready"]) == 1  # 503
    assert healthcheck.main(["/metrics"]) == 2
    monkeypatch.setenv("METAMCP_PORT", "1")  # nothing listens there
    assert healthcheck.main(["/health"]) == 1
    monkeypatch.setenv("METAMCP_PORT", "not-a-port")
    assert healthcheck.main(["/health"]) == 1
    assert list(tmp_path.iterdir()) == []  # a probe writes nothing


def test_probe_addresses() -> None:
    assert healthcheck.probe_address("0.0.0.0") == "127.0.0.1"
    assert healthcheck.probe_address("::") == "[::1]"
    assert healthcheck.probe_address("10.1.2.3") == "10.1.2.3"
    assert healthcheck.probe_address("fd00::5") == "[fd00::5]"


def _migrate_at_once(url: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(30)
        results.put(("applied", migrate(url)))
    except BaseException as error:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(("error", repr(error)))


SCHEMA = """SELECT table_name, column_name, data_type, is_nullable, column_default
            FROM information_schema.columns WHERE table_schema = 'public'
            ORDER BY table_name, column_name"""


def schema_of(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
            columns = cur.fetchall()
            cur.execute("SELECT migration_id, count(*) FROM _yoyo_migration GROUP BY migration_id ORDER BY 1")
            applied = cur.fetchall()
        return columns, applied
    finally:
        conn.close()


def apply_first(url: str, count: int) -> None:
    """Bring a database to an older release: yoyo's own tables and the first `count` migrations."""
    from yoyo import get_backend, read_migrations

    from metamcp.db import MIGRATIONS_DIR

    migrations = read_migrations(str(MIGRATIONS_DIR))
    backend = get_backend(url)
    try:
        with backend.lock():
            backend.apply_migrations(backend.to_apply(migrations.__class__(migrations[:count])))
    finally:
        backend.connection.close()


@pytest.mark.parametrize("already", [0, 1], ids=["fresh", "upgrade"])
def test_two_processes_migrating_at_once_leave_one_schema(database_url: str, already: int) -> None:
    """Two replicas' masters starting together, on a fresh database and on one a release behind
    (there yoyo's own tables exist, so only the migration lock keeps them apart): both succeed,
    each migration is applied once, and the schema is the one a single process leaves."""
    reference, _ = schema_of(database_url)
    context = multiprocessing.get_context("spawn")
    with scratch_database(database_url, "deploy_race", migrated=False) as url:
        if already:
            apply_first(url, already)
        barrier = context.Barrier(2)
        results = context.Queue()
        processes = [context.Process(target=_migrate_at_once, args=(url, barrier, results)) for _ in range(2)]
        for process in processes:
            process.start()
        try:
            outcomes = sorted(results.get(timeout=60) for _ in processes)
        finally:
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join(5)
        assert outcomes == [("applied", 0), ("applied", len(migration_ids()) - already)]
        columns, applied = schema_of(url)
        assert applied == [(mid, 1) for mid in sorted(migration_ids())]
        assert columns == reference


def test_a_lock_left_by_a_killed_migration_does_not_block_the_next_start(database_url: str) -> None:
    """A pod killed while migrating leaves yoyo's lock row behind; the next start removes it
    (it holds the advisory lock, so no live gateway is migrating) instead of failing."""
    with scratch_database(database_url, "deploy_stale", migrated=False) as url:
        apply_first(url, 1)
        conn = psycopg2.connect(url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 999999)")
                started = time.monotonic()
                assert migrate(url) == len(migration_ids()) - 1
                assert time.monotonic() - started < 5  # yoyo alone waits 10 s, then gives up
                cur.execute("SELECT count(*) FROM yoyo_lock")
                assert cur.fetchone() == (0,)
        finally:
            conn.close()


def test_a_start_waits_for_another_migration_then_gives_up_in_one_line(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "MIGRATION_WAIT", 0.5)
    holder = psycopg2.connect(database_url)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (db.MIGRATION_LOCK_KEY,))
        started = time.monotonic()
        with pytest.raises(ConfigError) as raised:
            migrate(database_url)
        assert 0.5 <= time.monotonic() - started < 5
        assert raised.value.setting == "DATABASE_URL"
        assert "migrating" in str(raised.value)
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (db.MIGRATION_LOCK_KEY,))
        assert migrate(database_url) == 0  # its turn now
    finally:
        holder.close()
