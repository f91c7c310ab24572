"""Benchmark the HTTP service end to end against the Anthropic simulator, with caps and the ledger on.

    uv run python bench/gateway.py                                   # 0 and 50 ms, c = 1, 16, 64, 256, 15 s each
    uv run python bench/gateway.py --latency 0 --concurrency 1,64 --duration 5s
    uv run python bench/gateway.py --database-url postgresql://root@127.0.0.1:5432/test
    uv run python bench/gateway.py --litellm                         # also LiteLLM's proxy on the same simulator
    uv run python bench/gateway.py --json                            # machine-readable output only on stdout

For every simulator latency it starts the simulator (`cascade simulator`), the service (`cascade serve --workers W`,
caps and ledger on, rate limits out of the way) and, with --litellm, a LiteLLM proxy; then for every concurrency
it runs wrk (bench/classify.lua) against the simulator's POST /v1/messages directly (the baseline), against the
service's POST /v1/classify, and against LiteLLM's POST /v1/messages, each after a short warm-up. It measures
throughput, p50/p99 latency, non-2xx responses, CPU per request and RSS per worker of the server's processes
(/proc), ledger rows written per second and the share of requests that escalated (from the database).

The database is its own, `cascade_bench_gateway`, on the embedded PostgreSQL under .cascade/bench (default) or on
--database-url's server; it is dropped at the end unless --keep. Everything started is stopped at the end. It
prints numbers only; nothing here fails on a slow figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cluster import admin_url_for, drop_database  # bench/cluster.py
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.cascade.prompt import Task, build_request
from service.core import schema
from service.core.database import Database
from service.core.settings import Settings
from service.money.catalog import Catalog
from service.simulator import behaviour, corpus
from service.tenancy.keys import issue_key

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().with_name("classify.lua")
DB_NAME = "cascade_bench_gateway"
TEAM = "bench"
LABELS = ("spam", "ham")
BIG = "1000000"
LITELLM_SPEC = "litellm[proxy]>=1.74,<1.110"  # 1.109.x's proxy extras are not all on every index; pip picks the newest
LITELLM_MODEL = "bench-haiku"
LITELLM_KEY = "sk-cascade-bench-0000000000000000"  # the proxy refuses to start without a master key
ANTHROPIC_VERSION = "2023-06-01"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN_NOTES: list[str] = []  # things that went wrong outside any one cell, printed with the notes
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Arguments


def parse_seconds(value: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h)?\s*", value)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (use 15s, 1m, 500ms)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def parse_floats(value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {value!r}") from None


def parse_ints(value: str) -> list[int]:
    try:
        numbers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be positive")
    return numbers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=parse_floats, default=[0.0, 50.0], help="simulator latencies in ms (0,50)")
    parser.add_argument(
        "--concurrency", type=parse_ints, default=[1, 16, 64, 256], help="wrk connections (1,16,64,256)"
    )
    parser.add_argument("--duration", type=parse_seconds, default=15.0, help="each measured run (15s)")
    parser.add_argument("--warmup", type=parse_seconds, default=2.0, help="warm-up before each measured run (2s)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the service (2)")
    parser.add_argument(
        "--database-url",
        help=f"a PostgreSQL server (postgresql://...); the bench creates and drops `{DB_NAME}` on it. "
        "Default: the embedded PostgreSQL under --data-dir",
    )
    parser.add_argument(
        "--data-dir", default=str(ROOT / ".cascade" / "bench"), help="embedded cluster, logs, LiteLLM venv"
    )
    parser.add_argument("--keep", action="store_true", help=f"keep `{DB_NAME}` afterwards")
    parser.add_argument("--litellm", action="store_true", help="also measure a LiteLLM proxy on the same simulator")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of the table")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed (7)")
    parser.add_argument("--text", help="the text to classify (default: a corpus text the cheap model is sure of)")
    parser.add_argument(
        "--timeout", type=parse_seconds, default=30.0, help="wrk's per-request timeout (30s, the service's deadline)"
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.workers < 1:
        parser.error("--duration must be at least 1s and --workers at least 1")
    return args


# --------------------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, utime + stime in ticks) of a live process, or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces
    return int(rest[1]), int(rest[2]), int(rest[11]) + int(rest[12])


def all_stats() -> dict[int, tuple[int, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def tree(root: int) -> dict[int, tuple[int, int, int]]:
    """The root process and all its descendants: pid -> (ppid, pgrp, cpu ticks)."""
    stats = all_stats()
    found = {root: stats[root]} if root in stats else {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, stat in stats.items():
            if stat[0] == parent and pid not in found:
                found[pid] = stat
                frontier.append(pid)
    return found


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Proc:
    """A subprocess in a process group of its own, output to a log file, stopped with its whole group."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.name, self.log_path = name, log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group(self) -> list[int]:
        return [pid for pid, (_, pgrp, _) in all_stats().items() if pgrp == self.pid]

    def stop(self, grace: float = 15.0) -> None:
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    log(f"{self.name} did not stop within {grace:.0f} s; killing its process group")
            deadline = time.monotonic() + 5
            while self.group() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.group():  # the leader is gone but children linger (or the leader ignored SIGTERM)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        finally:
            self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cascade_argv() -> list[str]:
    script = Path(sys.executable).parent / "cascade"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from service.cli.main import main; sys.argv[0] = 'cascade'; main()"]


def wait_for(check: Any, proc: Proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{what} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{proc.tail()}")


def http_status(url: str, headers: dict[str, str] | None = None) -> int | None:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - always http://127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def helper(pid: int) -> bool:
    """multiprocessing's resource tracker, which uvicorn's spawned workers start next to themselves."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


class CpuRss:
    """CPU ticks of a process tree over a run, and the largest RSS of its workers, sampled in a thread."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.before: dict[int, int] = {}
        self.after: dict[int, int] = {}
        self.max_worker_kb = 0
        self.max_root_kb = 0
        self.workers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuRss:
        self.before = {pid: stat[2] for pid, stat in tree(self.root).items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = {pid: stat[2] for pid, stat in tree(self.root).items()}

    def _sample(self) -> None:
        while True:
            procs = tree(self.root)
            children = [pid for pid, stat in procs.items() if stat[0] == self.root and not helper(pid)]
            workers = children or [self.root]  # uvicorn with one worker serves in the supervisor itself
            self.workers.update(workers)
            for pid in workers:
                self.max_worker_kb = max(self.max_worker_kb, rss_kb(pid) or 0)
            self.max_root_kb = max(self.max_root_kb, rss_kb(self.root) or 0)
            if self._stop.wait(0.25):
                return

    @property
    def cpu_s(self) -> float:
        ticks = sum(after - self.before.get(pid, 0) for pid, after in self.after.items())
        return ticks / CLK_TCK


# --------------------------------------------------------------------------------------------------------------
# wrk


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing; installing it with apt-get (Debian package `wrk`)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        installed = subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True, check=False)
        if installed.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "bench/gateway.py needs wrk (https://github.com/wg/wrk): `apt-get install wrk` on Debian/Ubuntu, "
        "`brew install wrk` on macOS; it could not be installed here (not root, or no apt-get)."
    )


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    non_2xx: int = 0  # responses with a status outside 200-299
    socket_errors: int = 0  # connect, read, write errors and timeouts
    status: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # wrk itself did not run or printed no summary


def run_wrk(
    wrk: str, url: str, body: Path, headers: list[str], connections: int, seconds: float, timeout: float
) -> WrkResult:
    argv = [
        wrk, "--latency", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{math.ceil(seconds)}s",
        "--timeout", f"{math.ceil(timeout)}s", "-s", str(LUA), url, "--", str(body), *headers,
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout + 60, check=False)
    except subprocess.TimeoutExpired:
        return WrkResult(failure="wrk did not finish")
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        return WrkResult(failure=f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    latency, errors = data["latency_us"], data["errors"]
    status = {str(k): int(v) for k, v in data["status"].items()}
    non_2xx = sum(n for code, n in status.items() if not 200 <= int(code) < 300)
    seen = data["requests"] > 0

    def ms(key: str) -> float | None:
        return latency[key] / 1000 if seen else None

    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_s"],
        rps=data["rps"],
        p50_ms=ms("p50"),
        p90_ms=ms("p90"),
        p99_ms=ms("p99"),
        max_ms=ms("max"),
        non_2xx=max(non_2xx, errors["status"]),
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        status=status,
        errors=errors,
    )


# --------------------------------------------------------------------------------------------------------------
# Database


@dataclass
class LedgerCounts:
    requests: int
    attempts: int
    escalated: int
    not_ok: int  # failed or refused (a pending request is one in flight)


class BenchDatabase:
    def __init__(self, admin_url: str, runner: asyncio.Runner) -> None:
        self.admin_url = admin_url
        self.url = make_url(admin_url).set(database=DB_NAME).render_as_string(hide_password=False)
        self.runner = runner
        self.engine: AsyncEngine | None = None

    def create(self) -> tuple[str, str]:
        """(Re)create and migrate the bench database; returns PostgreSQL's version and max_connections."""

        async def go() -> tuple[str, str]:
            admin = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
                    await conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
                    version = str(await conn.scalar(text("SHOW server_version")))
                    max_conn = str(await conn.scalar(text("SHOW max_connections")))
            finally:
                await admin.dispose()
            await asyncio.to_thread(schema.upgrade, self.url)
            return version, max_conn

        result = self.runner.run(go())
        self.engine = create_async_engine(self.url, poolclass=NullPool)
        return result

    def drop(self) -> None:
        async def go() -> None:
            if self.engine is not None:
                await self.engine.dispose()
            await drop_database(self.admin_url, DB_NAME)

        self.runner.run(go())

    def dispose(self) -> None:
        if self.engine is not None:
            self.runner.run(self.engine.dispose())

    def issue_key(self, settings: Settings) -> str:
        async def go() -> str:
            db = Database(self.url, settings)
            try:
                return await issue_key(db, TEAM)
            finally:
                await db.dispose()

        return self.runner.run(go())

    def counts(self) -> LedgerCounts:
        async def go() -> LedgerCounts:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts), "
                            "(SELECT count(*) FROM requests WHERE escalated), "
                            "(SELECT count(*) FROM requests WHERE status IN ('failed', 'refused'))"
                        )
                    )
                ).one()
            return LedgerCounts(*(int(x) for x in row))

        return self.runner.run(go())

    def pending(self) -> int:
        async def go() -> int:
            assert self.engine is not None
            async with self.engine.connect() as conn:
                return int(await conn.scalar(text("SELECT count(*) FROM requests WHERE status = 'pending'")) or 0)

        return self.runner.run(go())


# --------------------------------------------------------------------------------------------------------------
# The workload


def choose_text(settings: Settings, seed: int) -> tuple[str, behaviour.Answer]:
    """A corpus text the simulator's cheap model labels with a confidence well above the threshold, so every
    request makes one upstream call. (A `{{sim:...}}` directive would not do: the simulator applies a directive's
    behaviours to the first calls with that exact text only, then answers as it would without one.)"""
    floor = max(float(settings.threshold) + 0.05, 0.9)
    best: tuple[str, behaviour.Answer] | None = None
    for sample in corpus.SAMPLES:
        if sample.truth not in LABELS:
            continue
        answer = behaviour.classify(seed, settings.cheap_model, sample.text, LABELS)
        if answer.label in LABELS and answer.confidence >= floor:
            return sample.text, answer
        if best is None or answer.confidence > best[1].confidence:
            best = (sample.text, answer)
    if best is None:
        raise SystemExit("no spam/ham text in the simulator's corpus; pass --text")
    return best


@dataclass
class Workload:
    text: str
    service_body: Path
    direct_body: Path
    litellm_body: Path
    expected: str  # what the simulator's cheap model answers for the text


def write_workload(settings: Settings, args: argparse.Namespace, work: Path) -> Workload:
    if args.text:
        chosen = args.text
        answer = behaviour.classify(args.seed, settings.cheap_model, chosen, LABELS)
    else:
        chosen, answer = choose_text(settings, args.seed)
    service_body = work / "classify.json"
    service_body.write_text(json.dumps({"text": chosen, "labels": list(LABELS)}))
    # The very body the service sends upstream for this text (service.cascade.prompt.build_request).
    upstream = build_request(Catalog().model(settings.cheap_model), Task(LABELS), chosen).body
    direct_body = work / "messages.json"
    direct_body.write_text(json.dumps(upstream))
    litellm_body = work / "litellm-messages.json"
    litellm_body.write_text(json.dumps({**upstream, "model": LITELLM_MODEL}))
    expected = (
        f"cheap {settings.cheap_model} answers {answer.label} at {answer.confidence} (threshold {settings.threshold})"
    )
    return Workload(chosen, service_body, direct_body, litellm_body, expected)


# --------------------------------------------------------------------------------------------------------------
# LiteLLM


def ensure_litellm(data_dir: Path) -> Path | None:
    venv = data_dir / "litellm-venv"
    exe = venv / "bin" / "litellm"
    python = venv / "bin" / "python"
    if exe.exists() and python.exists():
        check = subprocess.run(
            [str(python), "-c", "import litellm.proxy.proxy_server"], capture_output=True, check=False
        )
        if check.returncode == 0:
            return exe
    log(f"installing {LITELLM_SPEC} into {venv} (once; takes a minute)")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", LITELLM_SPEC],
            capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"LiteLLM: could not create its virtualenv: {exc}; skipping LiteLLM")
        return None
    if pip.returncode != 0 or not exe.exists():
        errors = [x for x in pip.stderr.splitlines() if not x.startswith("WARNING: Location")]
        log("LiteLLM: pip install failed; skipping LiteLLM:\n  " + "\n  ".join(errors[-5:]))
        return None
    return exe


def start_litellm(exe: Path, sim_port: int, work: Path, tag: str) -> tuple[Proc, int]:
    port = free_port()
    config = work / f"litellm-{tag}.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-haiku-4-5\n"
        f"      api_base: http://127.0.0.1:{sim_port}\n"
        "      api_key: sim\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch of the cost map from GitHub
    for name in ("DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        env.pop(name, None)  # no database: LiteLLM would try to use one
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "2"]
    proc = Proc("litellm", argv, work / f"litellm-{tag}.log", env, cwd=work)
    return proc, port


# --------------------------------------------------------------------------------------------------------------
# Cells


@dataclass
class ServerRun:
    """One measured wrk run against a server we started (the service or LiteLLM)."""

    wrk: WrkResult
    overhead_p50_ms: float | None = None  # p50 here - p50 of the simulator called directly
    cpu_ms_per_request: float | None = None
    rss_mb_per_worker: float | None = None  # max over workers of VmRSS during the run
    rss_mb_supervisor: float | None = None
    workers: int = 0


@dataclass
class Cell:
    latency_ms: float
    concurrency: int
    direct: WrkResult | None = None
    service: ServerRun | None = None
    litellm: ServerRun | None = None
    ledger_rows_per_s: float | None = None
    requests_rows: int = 0
    attempts_rows: int = 0
    escalated: int = 0
    not_ok_requests: int = 0
    escalation_share: float | None = None
    log_problems: dict[str, int] = field(default_factory=dict)  # service log warnings/errors during the cell
    drain_s: float | None = None  # how long the service took to finish what wrk left in flight
    notes: list[str] = field(default_factory=list)

    @property
    def flag(self) -> str:
        """ERRORS: not measured, non-2xx answers, socket errors or failed requests in the ledger; warnings: the
        service logged warnings or errors (say pool timeouts on requests wrk had already given up on)."""
        w = self.service.wrk if self.service else None
        if w is None or w.failure or w.non_2xx or w.socket_errors or self.not_ok_requests:
            return "ERRORS"
        return "warnings" if self.log_problems else ""


@dataclass
class Measured:
    run: ServerRun
    ledger: LedgerCounts | None  # rows added between just before and just after the measured run
    span_s: float  # that span
    problems: dict[str, int]  # warnings and errors the server logged, from the warm-up to the end of the drain
    drained_s: float  # how long the server took to finish what wrk left in flight


def wait_idle(root: int, db: BenchDatabase | None, limit: float) -> float:
    """Wait until the server has finished the requests wrk left in flight when it stopped (their connections are
    closed, but the service still classifies and settles them): its processes use under 10% of a core for half
    a second and, with `db`, no request is pending in the ledger. Returns the seconds waited."""
    started = time.monotonic()

    def ticks() -> int:
        return sum(stat[2] for stat in tree(root).values())

    previous, quiet = ticks(), 0
    while time.monotonic() - started < limit:
        time.sleep(0.25)
        now = ticks()
        busy = (now - previous) / CLK_TCK / 0.25
        previous = now
        idle = busy < 0.1 and (db is None or db.pending() == 0)
        quiet = quiet + 1 if idle else 0
        if quiet >= 2:
            break
    return time.monotonic() - started


def measure(
    wrk: str,
    proc: Proc,
    url: str,
    body: Path,
    headers: list[str],
    c: int,
    args: argparse.Namespace,
    db: BenchDatabase | None = None,
) -> Measured:
    """Warm up, drain, then one measured wrk run with the server's CPU and RSS watched, and drain again. With
    `db`, also the ledger rows added during the measured run."""
    watch = LogWatch(proc.log_path)
    watch.skip()
    drain_limit = args.timeout + 15
    run_wrk(wrk, url, body, headers, c, args.warmup, args.timeout)
    wait_idle(proc.pid, db, drain_limit)  # start the measured run with an empty queue, not the warm-up's tail
    started = time.monotonic()
    before = db.counts() if db else None
    with CpuRss(proc.pid) as usage:
        result = run_wrk(wrk, url, body, headers, c, args.duration, args.timeout)
    after = db.counts() if db else None
    span = time.monotonic() - started
    drained = wait_idle(proc.pid, db, drain_limit)
    done = result.requests
    run = ServerRun(
        wrk=result,
        cpu_ms_per_request=usage.cpu_s * 1000 / done if done else None,
        rss_mb_per_worker=usage.max_worker_kb / 1024 if usage.max_worker_kb else None,
        rss_mb_supervisor=usage.max_root_kb / 1024 if usage.max_root_kb else None,
        workers=len(usage.workers),
    )
    delta = None
    if before is not None and after is not None:
        delta = LedgerCounts(*(a - b for a, b in zip(astuple(after), astuple(before), strict=True)))
    return Measured(run, delta, span, watch.problems(), drained)


_PROBLEM = re.compile(r"^(WARNING|ERROR|CRITICAL)\b|Traceback|\"level\":\s*\"(warning|error|critical)\"", re.I)


class LogWatch:
    """Warning and error lines a process wrote since the last look, grouped by message shape."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def skip(self) -> None:
        with contextlib.suppress(OSError):
            self.offset = self.path.stat().st_size

    def problems(self) -> dict[str, int]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return {}
        found: Counter[str] = Counter()
        for line in chunk.decode(errors="replace").splitlines():
            if not _PROBLEM.search(line):
                continue
            shape = line
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    shape = f"{entry.get('level')} {entry.get('logger')}: {entry.get('message')}"
            shape = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "#", shape)[:160]
            found[shape] += 1
        return dict(found.most_common(5))


def start_simulator(latency: float, seed: int, log_path: Path) -> tuple[Proc, int]:
    port = free_port()
    argv = [*cascade_argv(), "simulator", "--host", "127.0.0.1", "--port", str(port), "--latency-ms", f"{latency:g}"]
    proc = Proc("simulator", [*argv, "--seed", str(seed)], log_path, dict(os.environ))
    try:
        wait_for(lambda: port_open(port), proc, 30, "the simulator")
    except BaseException:
        proc.stop()
        raise
    return proc, port


def run_latency(
    latency: float, args: argparse.Namespace, wrk: str, db: BenchDatabase, key: str, load: Workload, work: Path,
    litellm_exe: Path | None, cells: list[Cell],
) -> None:  # fmt: skip
    procs: list[Proc] = []
    tag = f"{latency:g}ms"
    try:
        sim, sim_port = start_simulator(latency, args.seed, work / f"simulator-{tag}.log")
        procs.append(sim)

        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": db.url,
            "ANTHROPIC_API_KEY": "sim",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "CASCADE_TEAM_RATE_PER_S": BIG,
            "CASCADE_TEAM_BURST": BIG,
            "CASCADE_DAILY_CAP_USD": BIG,
            "CASCADE_MONTHLY_CAP_USD": BIG,
        }
        service = Proc(
            "service",
            [*cascade_argv(), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)],
            work / f"service-{tag}.log", env,
        )  # fmt: skip
        procs.append(service)
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/health/ready") == 200, service, 120, "the service")
        log(f"[{tag}] simulator :{sim_port}, service :{port} ({args.workers} workers, pid {service.pid})")

        litellm: Proc | None = None
        litellm_port = 0
        if litellm_exe is not None:
            try:
                litellm, litellm_port = start_litellm(litellm_exe, sim_port, work, tag)
                procs.append(litellm)
                wait_for(
                    lambda: http_status(f"http://127.0.0.1:{litellm_port}/health/liveliness") == 200,
                    litellm, 180, "LiteLLM",
                )  # fmt: skip
                log(f"[{tag}] LiteLLM :{litellm_port} (pid {litellm.pid})")
            except RuntimeError as exc:
                log(f"[{tag}] LiteLLM did not start, continuing without it: {exc}")
                RUN_NOTES.append(f"{tag}: LiteLLM did not start: {str(exc).splitlines()[0]}")
                litellm = None

        service_url = f"http://127.0.0.1:{port}/v1/classify"
        service_headers = [f"Authorization: Bearer {key}"]
        direct_headers = ["x-api-key: sim", f"anthropic-version: {ANTHROPIC_VERSION}"]
        for c in args.concurrency:
            cell = Cell(latency, c)
            cells.append(cell)
            log(f"[{tag}] c={c}: simulator direct")
            # A fresh simulator for each baseline: it keeps a record of every call, ~0.5 kB each, for ever.
            direct_sim, direct_port = start_simulator(latency, args.seed, work / f"simulator-direct-{tag}.log")
            try:
                direct_url = f"http://127.0.0.1:{direct_port}/v1/messages"
                run_wrk(wrk, direct_url, load.direct_body, direct_headers, c, args.warmup, args.timeout)
                cell.direct = run_wrk(
                    wrk, direct_url, load.direct_body, direct_headers, c, args.duration, args.timeout
                )  # fmt: skip
            finally:
                direct_sim.stop()

            log(f"[{tag}] c={c}: service")
            if not service.alive():
                cell.notes.append(f"service died (exit {service.popen.returncode})")
                continue
            measured = measure(wrk, service, service_url, load.service_body, service_headers, c, args, db)
            cell.service, cell.log_problems, cell.drain_s = measured.run, measured.problems, measured.drained_s
            if (delta := measured.ledger) is not None:
                cell.requests_rows, cell.attempts_rows = delta.requests, delta.attempts
                cell.escalated, cell.not_ok_requests = delta.escalated, delta.not_ok
                cell.ledger_rows_per_s = (delta.requests + delta.attempts) / measured.span_s
                if delta.requests:
                    cell.escalation_share = delta.escalated / delta.requests
            if cell.direct.p50_ms is not None and cell.service.wrk.p50_ms is not None:
                cell.service.overhead_p50_ms = cell.service.wrk.p50_ms - cell.direct.p50_ms
            if cell.not_ok_requests:
                cell.notes.append(f"{cell.not_ok_requests} requests failed or refused in the ledger")

            if litellm is not None and litellm.alive():
                log(f"[{tag}] c={c}: LiteLLM")
                cell.litellm = measure(
                    wrk, litellm, f"http://127.0.0.1:{litellm_port}/v1/messages", load.litellm_body,
                    [f"Authorization: Bearer {LITELLM_KEY}", f"anthropic-version: {ANTHROPIC_VERSION}"], c, args,
                ).run  # fmt: skip
                if cell.direct.p50_ms is not None and cell.litellm.wrk.p50_ms is not None:
                    cell.litellm.overhead_p50_ms = cell.litellm.wrk.p50_ms - cell.direct.p50_ms
    except RuntimeError as exc:
        log(f"[{tag}] {exc}")
        RUN_NOTES.append(f"{tag}: {str(exc).splitlines()[0]}")
        done_cs = {cell.concurrency for cell in cells if cell.latency_ms == latency}
        for c in args.concurrency:
            if c not in done_cs:
                cells.append(Cell(latency, c, notes=[str(exc).splitlines()[0]]))
    finally:
        for proc in reversed(procs):
            proc.stop()


# --------------------------------------------------------------------------------------------------------------
# Output


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def errors_text(r: WrkResult | None) -> str:
    if r is None:
        return "-"
    if r.failure:
        return "wrk failed"
    return f"{r.non_2xx}" + (f"+{r.socket_errors}s" if r.socket_errors else "")


def print_report(cells: list[Cell], meta: dict[str, Any]) -> None:
    print(
        f"service: {meta['workers']} workers, caps and ledger on; PostgreSQL {meta['postgres']} "
        f"({meta['database']}, max_connections {meta['max_connections']}); {meta['duration_s']:g} s per run after "
        f"{meta['warmup_s']:g} s warm-up; wrk -t min(c,2) --timeout {meta['timeout_s']:g}s"
    )
    print(f"text: {meta['text']!r} ({meta['expected']})")
    print()
    headers = [
        "sim ms", "conc", "req/s", "p50 ms", "p99 ms", "direct p50", "overhead p50", "non-2xx", "CPU ms/req",
        "RSS MB/wkr", "ledger rows/s", "escalated", "flag",
    ]  # fmt: skip
    rows = []
    for cell in cells:
        s = cell.service
        w = s.wrk if s else None
        rows.append([
            f"{cell.latency_ms:g}", str(cell.concurrency),
            fmt(w.rps if w and not w.failure else None), fmt(w.p50_ms if w else None, 2),
            fmt(w.p99_ms if w else None, 2), fmt(cell.direct.p50_ms if cell.direct else None, 2),
            fmt(s.overhead_p50_ms if s else None, 2), errors_text(w),
            fmt(s.cpu_ms_per_request if s else None, 2), fmt(s.rss_mb_per_worker if s else None, 0),
            fmt(cell.ledger_rows_per_s, 0),
            "-" if cell.escalation_share is None else f"{cell.escalation_share:.1%}",
            cell.flag,
        ])  # fmt: skip
    print(table(headers, rows))

    print()
    print("simulator called directly (the baseline):")
    rows = [
        [
            f"{cell.latency_ms:g}", str(cell.concurrency), fmt(d.rps if not d.failure else None),
            fmt(d.p50_ms, 2), fmt(d.p99_ms, 2), errors_text(d),
        ]
        for cell in cells
        if (d := cell.direct) is not None
    ]  # fmt: skip
    print(table(["sim ms", "conc", "req/s", "p50 ms", "p99 ms", "non-2xx"], rows))

    if any(cell.litellm for cell in cells):
        print()
        print("LiteLLM proxy (POST /v1/messages, 2 workers, no database) on the same simulator:")
        rows = []
        for cell in cells:
            lt, s = cell.litellm, cell.service
            if lt is None:
                continue
            ratio = s.wrk.rps / lt.wrk.rps if s and lt.wrk.rps and not s.wrk.failure else None
            rows.append([
                f"{cell.latency_ms:g}", str(cell.concurrency), fmt(lt.wrk.rps if not lt.wrk.failure else None),
                fmt(lt.wrk.p50_ms, 2), fmt(lt.wrk.p99_ms, 2), fmt(lt.overhead_p50_ms, 2), errors_text(lt.wrk),
                fmt(lt.cpu_ms_per_request, 2), fmt(lt.rss_mb_per_worker, 0),
                "-" if ratio is None else f"{ratio:.2f}x",
                fmt(s.overhead_p50_ms if s else None, 2),
            ])  # fmt: skip
        print(table(
            ["sim ms", "conc", "req/s", "p50 ms", "p99 ms", "overhead p50", "non-2xx", "CPU ms/req", "RSS MB/wkr",
             "service/litellm req/s", "service overhead p50"],
            rows,
        ))  # fmt: skip
    elif meta.get("litellm"):
        print()
        print(f"LiteLLM: {meta['litellm']}")

    notes = list(RUN_NOTES)
    for cell in cells:
        where = f"{cell.latency_ms:g} ms, c={cell.concurrency}"
        runs = [("simulator direct", cell.direct), ("service", cell.service.wrk if cell.service else None)]
        runs.append(("LiteLLM", cell.litellm.wrk if cell.litellm else None))
        for name, w in runs:
            if w and (w.non_2xx or w.socket_errors):
                codes = ", ".join(f"{n} x {code}" for code, n in sorted(w.status.items()) if not code.startswith("2"))
                socket = ", ".join(f"{n} {kind}" for kind, n in w.errors.items() if kind != "status" and n)
                notes.append(
                    f"{where}: {name} non-2xx {codes or '-'}" + (f"; socket errors {socket}" if socket else "")
                )
            if w and w.failure:
                notes.append(f"{where}: {name}: {w.failure}")
        notes += [f"{where}: {note}" for note in cell.notes]
        if cell.drain_s is not None and cell.drain_s > 5:
            notes.append(f"{where}: the service took {cell.drain_s:.0f} s to finish what wrk left in flight")
        for shape, n in cell.log_problems.items():
            notes.append(f"{where}: service log {n} x {shape}")
    if notes:
        print()
        print("notes:")
        for note in notes:
            print(f"  {note}")


# --------------------------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our own handlers, so that an interrupt anywhere (asyncio.Runner would otherwise turn a Ctrl-C during a
    # database call into a task cancellation that can get lost) ends the bench through its finally blocks.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    wrk = ensure_wrk()
    data_dir = Path(args.data_dir).expanduser().resolve()
    work = data_dir / "gateway"
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings()  # the service reads the same environment (and .env), so the same models and threshold
    load = write_workload(settings, args, work)
    litellm_exe: Path | None = None
    litellm_note = ""
    if args.litellm:
        litellm_exe = ensure_litellm(data_dir)
        litellm_note = "not measured (see the log above)" if litellm_exe is None else ""

    cells: list[Cell] = []
    with asyncio.Runner() as runner:
        db = BenchDatabase(admin_url_for(args), runner)
        created = False
        try:
            version, max_connections = db.create()
            created = True
            log(f"created {DB_NAME} and migrated it to {schema.head()}")
            key = db.issue_key(Settings(_env_file=None, DATABASE_URL=db.url))
            for latency in args.latency:
                run_latency(latency, args, wrk, db, key, load, work, litellm_exe, cells)
        finally:
            if created and not args.keep:
                db.drop()
                log(f"dropped {DB_NAME}")
            else:
                db.dispose()

    meta = {
        "workers": args.workers,
        "postgres": version,
        "max_connections": max_connections,
        "database": "--database-url" if args.database_url else "embedded",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "timeout_s": args.timeout,
        "text": load.text,
        "expected": load.expected,
        "litellm": litellm_note,
        "notes": RUN_NOTES,
    }
    if args.json:
        print(json.dumps({"meta": meta, "cells": [{**asdict(c), "flag": c.flag} for c in cells]}, indent=2))
    else:
        print_report(cells, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
