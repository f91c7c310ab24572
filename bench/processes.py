"""The processes a bench starts, each in a process group of its own with its output in a log file and stopped
with its whole group, and what /proc says about processes (parent, group, CPU ticks, RSS).

bench/gateway.py and bench/jobs.py both start the service and the simulator through these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# Progress goes to stderr: stdout carries the report (or --json).
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
