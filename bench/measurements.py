"""What the gateway bench measures of a server around one wrk run: the CPU and RSS of its processes (/proc), the
warnings and errors its log gained, the ledger rows written, and how long it took to finish what wrk left in
flight; and the cells of the report these figures go into."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import astuple, dataclass, field
from pathlib import Path

from gateway_database import BenchDatabase, LedgerCounts  # bench/gateway_database.py
from processes import Proc, rss_kb, tree  # bench/processes.py
from wrk import WrkResult, run_wrk  # bench/wrk.py

CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN_NOTES: list[str] = []  # things that went wrong outside any one cell, printed with the notes


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
