"""The Dockerfile holds what production relies on: a slim, non-root runtime stage, its probe, its .dockerignore.

Parsed, not built: no Docker engine is needed. The HEALTHCHECK's probe is run, against a local HTTP server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service.core import schema
from tests.operations.deployment import DOCKERFILE, DOCKERIGNORE, SERVE


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
