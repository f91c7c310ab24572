"""The load generator: wrk (installed with apt-get when it is missing and that is allowed), run with
bench/classify.lua, whose `WRK_JSON {...}` summary line becomes a WrkResult."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from processes import log  # bench/processes.py

LUA = Path(__file__).resolve().with_name("classify.lua")


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
