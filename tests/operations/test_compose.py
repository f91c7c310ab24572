"""docker-compose.yml holds what production relies on: the services, their order, replicas, settings and secrets.

Parsed, not run: no Docker engine is needed. When a Compose implementation is on PATH, it validates the file too.
The Settings that the file's environment feeds are checked here as well: what an empty or a too-short value means.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.core.settings import Settings
from tests.operations.deployment import (
    COMPOSE,
    SERVE,
    command,
    environment,
    nginx_config,
    one,
    seconds,
    service,
    setting,
)

# Services that run the cascade image and so read Settings from their environment.
CASCADE_IMAGE_SERVICES = ("migrate", "cascade", "worker", "simulator")
SECRETS = ("ANTHROPIC_API_KEY", "CASCADE_ADMIN_KEY", "CASCADE_SESSION_SECRET")


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
