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
import json
import os
import re
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from cluster import admin_url_for  # bench/cluster.py
from gateway_database import DB_NAME, BenchDatabase
from gateway_printout import print_report
from litellm_proxy import LITELLM_KEY, ensure_litellm, start_litellm
from measurements import RUN_NOTES, Cell, measure
from processes import ROOT, Proc, cascade_argv, free_port, http_status, log, port_open, wait_for
from workload import Workload, write_workload
from wrk import ensure_wrk, run_wrk

from service.core import schema
from service.core.settings import Settings

BIG = "1000000"
ANTHROPIC_VERSION = "2023-06-01"


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
# The run


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
