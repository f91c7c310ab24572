"""The deployment files hold what production relies on: Dockerfile, docker-compose.yml and deploy/nginx.conf.

Parsed, not built: no Docker engine is needed. When a Compose implementation is on PATH, it validates the file too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.core import schema
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVE = ["cascade", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
# Services that run the cascade image and so read Settings from their environment.
CASCADE_IMAGE_SERVICES = ("migrate", "cascade", "worker", "simulator")
SECRETS = ("ANTHROPIC_API_KEY", "CASCADE_ADMIN_KEY", "CASCADE_SESSION_SECRET")


# ---- Dockerfile ---------------------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a line continuation"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, arguments))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(DOCKERFILE.read_text())


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [arguments for kw, arguments in stage if kw == keyword]
    assert values, f"the runtime stage has no {keyword}"
    return values[-1]


def test_dockerfile_builds_in_one_stage_and_runs_in_a_slim_one(dockerfile: list[list[tuple[str, str]]]) -> None:
    assert len(dockerfile) >= 2, "the Dockerfile must be multi-stage"
    build, runtime = dockerfile[0], dockerfile[-1]
    build_name = build[0][1].split()[-1]
    assert re.fullmatch(r"python:3\.12-slim AS \w+", build[0][1], re.IGNORECASE), build[0][1]
    assert runtime[0][1].split()[0] == "python:3.12-slim"
    syncs = [arguments for kw, arguments in build if kw == "RUN" and "uv sync" in arguments]
    assert any("--frozen" in s and "--no-dev" in s for s in syncs), "the build must install exactly uv.lock, no dev"
    assert all(kw != "RUN" or "uv " not in arguments for kw, arguments in runtime), "no uv in the runtime stage"
    assert any(kw == "COPY" and f"--from={build_name}" in arguments for kw, arguments in runtime)


def test_runtime_has_the_migrations_where_cascade_migrate_looks(dockerfile: list[list[tuple[str, str]]]) -> None:
    # service/core/schema.py finds the migrations next to the `service` package, so the project is installed editable
    # (a --no-editable install would put `service` into site-packages, away from them) and both are copied.
    beside_the_package = Path(schema.__file__).resolve().parents[2]
    assert beside_the_package / "migrations" == schema.MIGRATIONS
    runtime = dockerfile[-1]
    targets = [arguments.split()[-1].rstrip("/") for kw, arguments in runtime if kw == "COPY"]
    workdir = last(runtime, "WORKDIR")
    assert f"{workdir}/service" in targets
    assert f"{workdir}/migrations" in targets
    assert f"{workdir}/.venv" in targets
    build_runs = [arguments for kw, arguments in dockerfile[0] if kw == "RUN"]
    assert not [run for run in build_runs if "--no-editable" in run]


def test_runtime_user_is_not_root(dockerfile: list[list[tuple[str, str]]]) -> None:
    user = last(dockerfile[-1], "USER").split(":")[0]
    assert user not in ("root", "0"), f"the service must not run as root (USER {user})"


def test_cmd_serves_on_all_interfaces(dockerfile: list[list[tuple[str, str]]]) -> None:
    assert json.loads(last(dockerfile[-1], "CMD")) == SERVE


def healthcheck_command(dockerfile: list[list[tuple[str, str]]]) -> tuple[str, list[str]]:
    options, _, command = last(dockerfile[-1], "HEALTHCHECK").partition("CMD ")
    return options, json.loads(command)


def test_healthcheck_probes_readiness_without_curl(dockerfile: list[list[tuple[str, str]]]) -> None:
    options, command = healthcheck_command(dockerfile)
    assert command[:2] == ["python", "-c"], "the slim image has no curl or wget: the probe is Python's"
    port = SERVE[SERVE.index("--port") + 1]
    assert f"127.0.0.1:{port}/health/ready" in command[2]
    assert "timeout=" in command[2], "the probe needs its own short timeout"
    assert "--timeout=" in options


class _Probe(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_exits_0_when_ready_and_1_otherwise(
    dockerfile: list[list[tuple[str, str]]], probe_server: ThreadingHTTPServer, status: int, exit_code: int
) -> None:
    _, command = healthcheck_command(dockerfile)
    code = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{probe_server.server_address[1]}")
    _Probe.status = status
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False)
    finally:
        _Probe.status = 200
    assert done.returncode == exit_code, done.stderr.decode()


def test_healthcheck_exits_1_when_nothing_listens(dockerfile: list[list[tuple[str, str]]]) -> None:
    _, command = healthcheck_command(dockerfile)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    port = server.server_address[1]
    server.server_close()
    code = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False)
    assert done.returncode == 1


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if not line.startswith("#")}
    for pattern in (".env", ".venv", ".cascade", ".git", "bench/results", "node_modules", ".pytest_cache"):
        assert pattern in patterns, pattern


# ---- docker-compose.yml -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"docker-compose.yml has no service {name!r}"
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def environment(svc: dict[str, Any]) -> dict[str, str | None]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # the list form: KEY=value, or KEY alone to pass it through
        return {k: (v if sep else None) for k, sep, v in (item.partition("=") for item in env)}
    return {k: None if v is None else str(v) for k, v in env.items()}


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    return cmd.split() if isinstance(cmd, str) else list(cmd or [])


def seconds(duration: str | int | float) -> float:
    """A Compose (Go) or nginx duration: 40s, 1m30s, 500ms, 60 (seconds)."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", duration.strip())
    assert parts and "".join(n + u for n, u in parts) == duration.strip(), f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def setting(svc: dict[str, Any], field_name: str) -> float:
    """The value the service will run with: the compose file's, else the Settings default."""
    model_field = Settings.model_fields[field_name]
    value = environment(svc).get(str(model_field.validation_alias))
    return float(model_field.default if value is None else value)


def test_compose_is_the_compose_specification(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no `version:`"
    assert set(compose["services"]) >= {"postgres", "migrate", "cascade", "lb", "simulator"}


def test_postgres_has_a_healthcheck_and_a_named_volume(compose: dict[str, Any]) -> None:
    postgres = service(compose, "postgres")
    assert str(postgres["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volumes = [str(v).split(":")[0] for v in postgres.get("volumes", [])]
    named = set(compose.get("volumes") or {})
    assert any(v in named for v in volumes), "the database must live in a named volume"
    assert environment(postgres).get("POSTGRES_PASSWORD"), "postgres needs a password"


def test_postgres_takes_every_connection_the_replicas_may_open(compose: dict[str, Any]) -> None:
    cascade, worker = service(compose, "cascade"), service(compose, "worker")
    per_process = setting(cascade, "db_pool_size") + setting(cascade, "db_max_overflow")
    workers = int(SERVE[SERVE.index("--workers") + 1])
    job_workers = worker.get("deploy", {}).get("replicas", 1)
    peak = cascade["deploy"]["replicas"] * workers * per_process
    peak += job_workers * (setting(worker, "db_pool_size") + setting(worker, "db_max_overflow"))
    found = re.search(r"max_connections=(\d+)", " ".join(command(service(compose, "postgres"))))
    max_connections = int(found.group(1)) if found else 100  # PostgreSQL's default
    assert peak + 10 <= max_connections, f"{peak} pooled connections at peak, max_connections={max_connections}"


def test_migrate_runs_once_and_gates_the_replicas(compose: dict[str, Any]) -> None:
    migrate = service(compose, "migrate")
    assert command(migrate)[:2] == ["cascade", "migrate"]
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "DATABASE_URL" in environment(migrate)

    cascade = service(compose, "cascade")
    assert cascade["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert cascade["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert environment(migrate)["DATABASE_URL"] == environment(cascade)["DATABASE_URL"]


def test_migrate_and_simulator_run_the_cascade_image(compose: dict[str, Any]) -> None:
    cascade = service(compose, "cascade")
    assert cascade["build"]["context"] == "."
    for name in ("migrate", "worker", "simulator"):
        other = service(compose, name)
        assert other["image"] == cascade["image"]
        assert other["build"] == cascade["build"]
    assert "command" not in cascade, "the replicas run the image's CMD"


def test_a_job_worker_runs_after_the_migration_without_the_http_probe(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    assert command(worker) == ["cascade", "worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["healthcheck"] == {"disable": True}, "the image's probe is for `cascade serve`"
    env, replicas = environment(worker), environment(service(compose, "cascade"))
    assert env["DATABASE_URL"] == replicas["DATABASE_URL"]
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CASCADE_DAILY_CAP_USD", "CASCADE_MONTHLY_CAP_USD"):
        assert name in env and env[name] is None, f"{name}: passed through like the replicas'"
    assert "ports" not in worker and "expose" not in worker


def test_three_replicas_and_nothing_that_stops_scaling(compose: dict[str, Any]) -> None:
    cascade = service(compose, "cascade")
    assert cascade["deploy"]["replicas"] == 3
    assert "ports" not in cascade, "replicas publishing a host port would clash: the lb publishes"
    assert "container_name" not in cascade, "a fixed container name allows one replica only"


def test_stop_grace_period_exceeds_the_shutdown_grace(compose: dict[str, Any]) -> None:
    cascade = service(compose, "cascade")
    grace = setting(cascade, "shutdown_grace_s")
    assert "CASCADE_SHUTDOWN_GRACE_S" in environment(cascade), "set explicitly, next to stop_grace_period"
    # Beyond the in-flight requests' grace, the workers still close their pools: a few seconds of margin.
    assert seconds(cascade["stop_grace_period"]) >= grace + 5


def setting_names() -> set[str]:
    return {f.validation_alias for f in Settings.model_fields.values() if isinstance(f.validation_alias, str)}


def test_every_variable_set_on_the_service_is_a_setting(compose: dict[str, Any]) -> None:
    names = setting_names()
    assert {"DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CASCADE_SHUTDOWN_GRACE_S"} <= names
    for name in CASCADE_IMAGE_SERVICES:
        unknown = set(environment(service(compose, name))) - names
        assert not unknown, f"{name}: not settings of the service (typo?): {sorted(unknown)}"


def test_secrets_pass_through_and_nothing_defaults_to_empty(compose: dict[str, Any]) -> None:
    # Unset variables stay unset in the container (the service would also treat an empty one as unset, see
    # test_an_empty_variable_counts_as_unset), so the container's environment shows only what was configured.
    lines = [line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not re.findall(r"\$\{\w+:?-\}", "\n".join(lines)), "no ${VAR:-} / ${VAR-} defaults to empty"
    env = environment(service(compose, "cascade"))
    for secret in (*SECRETS, "ANTHROPIC_BASE_URL"):
        assert secret in env, f"{secret} is not passed to the replicas"
        assert env[secret] is None, f"{secret} must be passed through from the shell, not given a value here"
    assert all(value != "" for value in env.values())


def test_simulator_only_under_a_profile(compose: dict[str, Any]) -> None:
    simulator = service(compose, "simulator")
    assert simulator.get("profiles"), "the simulator must not start in a production `up`"
    assert command(simulator) == ["cascade", "simulator", "--host", "0.0.0.0", "--port", "8900"]
    assert "8900" in " ".join(simulator["healthcheck"]["test"]), "the image's probe is for `cascade serve`"
    assert service(compose, "migrate")["healthcheck"] == {"disable": True}
    for name, other in compose["services"].items():
        if name != "simulator" and not other.get("profiles"):
            assert "simulator" not in (other.get("depends_on") or {}), f"{name} depends on a trial-only service"


def test_lb_publishes_a_port_and_mounts_the_nginx_config(compose: dict[str, Any]) -> None:
    lb = service(compose, "lb")
    assert str(lb["image"]).startswith("nginx:")
    published = [str(p) for p in lb.get("ports", [])]
    assert published, "the lb publishes the service's port"
    listen = one(nginx_config().virtual_server(), "listen")[0]
    assert all(p.rsplit(":", 1)[-1] == listen for p in published), (published, listen)
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert "/nginx-health" in " ".join(lb["healthcheck"]["test"])


# ---- deploy/nginx.conf --------------------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        found = [d for d in self.block or [] if d.name == name]
        for child in self.block or []:
            found += child.all(name)
        return found


@dataclass
class NginxConfig:
    root: Directive

    def upstream(self, name: str) -> Directive:
        found = [d for d in self.root.all("upstream") if d.args == [name]]
        assert len(found) == 1, f"no upstream {name!r}"
        return found[0]

    def location(self, path: str) -> Directive:
        found = [d for d in self.root.all("location") if d.args[-1] == path]
        assert found, f"no location {path}"
        return found[0]

    def virtual_server(self) -> Directive:
        servers = [d for d in self.root.all("server") if d.block is not None]  # not an upstream's `server`
        assert len(servers) == 1, "one server block"
        return servers[0]


def parse_nginx(text: str) -> NginxConfig:
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], block))
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token.strip("\"'"))
    assert len(stack) == 1 and not words, "unbalanced braces in nginx.conf"
    return NginxConfig(Directive("main", [], stack[0]))


def nginx_config() -> NginxConfig:
    return parse_nginx(NGINX.read_text())


def one(block: Directive, name: str) -> list[str]:
    found = [d.args for d in block.block or [] if d.name == name]
    assert len(found) == 1, f"{block.name} {block.args}: expected one {name}, found {found}"
    return found[0]


def test_nginx_proxies_to_the_cascade_service_on_its_port(compose: dict[str, Any]) -> None:
    conf = nginx_config()
    target = one(conf.location("/"), "proxy_pass")[0]
    assert target.startswith("http://")
    upstream = conf.upstream(target.removeprefix("http://"))
    port = SERVE[SERVE.index("--port") + 1]
    servers = [d.args for d in upstream.block or [] if d.name == "server"]
    assert servers, "the upstream has no server"
    assert "cascade" in compose["services"]  # the Compose service name, which Docker's DNS resolves
    assert all(s[0] == f"cascade:{port}" for s in servers), servers
    if any("resolve" in s for s in servers):  # re-resolving needs a zone and a resolver (Docker's DNS)
        one(upstream, "zone")
        assert conf.root.all("resolver"), "`resolve` without a resolver"
    assert one(upstream, "keepalive")
    assert one(conf.virtual_server(), "proxy_http_version") == ["1.1"]
    for path in PROXIED:
        assert one(conf.location(path), "proxy_pass") == [target], path


PROXIED = ("/", "/v1/classify/batch", "/v1/jobs")


def test_nginx_waits_longer_than_the_service_deadline(compose: dict[str, Any]) -> None:
    deadline = setting(service(compose, "cascade"), "request_deadline_s")
    for path in PROXIED:
        assert seconds(one(nginx_config().location(path), "proxy_read_timeout")[0]) > deadline, path


def byte_size(limit: str) -> float:
    return float(limit[:-1]) * {"k": 1024, "m": 1024**2}[limit[-1].lower()] if limit[-1].isalpha() else float(limit)


def test_nginx_takes_every_body_the_service_takes(compose: dict[str, Any]) -> None:
    conf, cascade = nginx_config(), service(compose, "cascade")
    size = byte_size(one(conf.virtual_server(), "client_max_body_size")[0])
    assert size >= setting(cascade, "max_body_bytes")
    assert size <= 1024**2, "the outer bound stays small"
    batch = byte_size(one(conf.location("/v1/classify/batch"), "client_max_body_size")[0])
    assert setting(cascade, "max_batch_body_bytes") <= batch <= 16 * 1024**2
    jobs = conf.location("/v1/jobs")
    limit = byte_size(one(jobs, "client_max_body_size")[0])
    assert limit >= max(setting(cascade, "max_job_body_bytes"), setting(cascade, "max_job_inline_bytes"))
    assert one(jobs, "proxy_request_buffering") == ["off"], "an upload streams to the replica, not to nginx's disk"


def test_nginx_never_retries_a_request_that_may_have_spent_money() -> None:
    conf = nginx_config()
    retry_on = one(conf.virtual_server(), "proxy_next_upstream")
    assert "non_idempotent" not in retry_on, "a POST /v1/classify sent twice may be paid for twice"
    assert set(retry_on) <= {"error", "timeout"}, retry_on
    for path in PROXIED:  # inherited by every location: none may set its own
        assert not [d for d in conf.location(path).block or [] if d.name == "proxy_next_upstream"], path


def test_nginx_passes_the_request_id_back_and_answers_its_own_health() -> None:
    conf = nginx_config()
    for name in ("proxy_hide_header", "more_clear_headers", "add_header"):
        for directive in conf.root.all(name):
            assert "x-request-id" not in " ".join(directive.args).lower()
    health = conf.location("/nginx-health")
    assert one(health, "return")[0] == "200"
    server = conf.virtual_server()
    hosts = [d.args for d in server.block or [] if d.name == "proxy_set_header" and d.args[0].lower() == "host"]
    assert hosts == [["Host", "$http_host"]], "the dashboard's login compares Origin with Host, port included"
    for path in PROXIED:  # a location with any proxy_set_header of its own would inherit none of these
        assert not [d for d in conf.location(path).block or [] if d.name == "proxy_set_header"], path


# ---- a Compose implementation, when there is one --------------------------------------------------------------


def compose_validators() -> list[Any]:
    """`docker compose` (v2 plugin) and `docker-compose` (v1, or v2 standalone), each skipped when missing."""
    docker = shutil.which("docker")
    plugin = docker is not None and (
        subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60, check=False).returncode == 0
    )
    standalone = shutil.which("docker-compose") is not None
    return [
        pytest.param(
            ["docker", "compose"],
            id="docker-compose-plugin",
            marks=pytest.mark.skipif(not plugin, reason="no `docker compose` here (.ci/run installs it when it can)"),
        ),
        pytest.param(
            ["docker-compose"],
            id="docker-compose",
            marks=pytest.mark.skipif(not standalone, reason="no `docker-compose` on PATH"),
        ),
    ]


def run_compose(validator: list[str], path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*validator, "-f", str(path), *args], capture_output=True, text=True, timeout=120, check=False, cwd=path.parent
    )


@pytest.mark.parametrize("validator", compose_validators())
def test_a_compose_implementation_accepts_the_file(validator: list[str], tmp_path: Path) -> None:
    done = run_compose(validator, COMPOSE, "config", "--quiet")
    assert done.returncode == 0, done.stderr
    done = run_compose(validator, COMPOSE, "--profile", "trial", "config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"postgres", "migrate", "cascade", "worker", "lb", "simulator"}
    # The validator can say no: the same file with a condition Compose does not know is refused.
    document = yaml.safe_load(COMPOSE.read_text())
    document["services"]["cascade"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(document))
    assert run_compose(validator, broken, "config", "--quiet").returncode != 0


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.core.settings import Settings

    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "")
    monkeypatch.setenv("CASCADE_SESSION_SECRET", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.anthropic_api_key is None
    assert settings.anthropic_base_url is None
    assert settings.session_secret is None


def test_a_reservation_ttl_a_call_could_outlive_is_refused() -> None:
    """The sweeper must never charge the worst case of a call whose holder is still waiting on it."""
    for field in ("CASCADE_REQUEST_DEADLINE_S", "CASCADE_ATTEMPT_TIMEOUT_S"):
        with pytest.raises(ValueError, match="CASCADE_RESERVATION_TTL_S must be longer"):
            Settings(_env_file=None, ANTHROPIC_API_KEY="unused", CASCADE_RESERVATION_TTL_S=60, **{field: 60})  # type: ignore[call-arg, arg-type]
    Settings(_env_file=None, ANTHROPIC_API_KEY="unused", CASCADE_RESERVATION_TTL_S=61, CASCADE_ATTEMPT_TIMEOUT_S=60)  # type: ignore[call-arg]
