"""Time a bulk job end to end: submit-to-done for N items through the Message Batches API of the simulator.

    uv run python bench/jobs.py                        # 100,000 items, embedded PostgreSQL under .cascade/bench
    uv run python bench/jobs.py --items 20000
    uv run python bench/jobs.py --database-url postgresql://root@127.0.0.1:5432/test

It starts the simulator (`cascade simulator --batch-processing-s 0`), the API (`cascade serve`) and one worker
(`cascade worker`), writes N items to a JSONL file, uploads it (POST /v1/jobs/jsonl, as `cascade jobs submit`
does), and polls the job until it is done. It prints the upload time, submit-to-done, items per second, the worker's
and the API's peak memory (VmHWM), and checks the outcome: one result line per item, every ledger row settled at
its own batch prices (cost = tokens x the prices stored on the row), the cap rows' spent equal to the ledger. The
database is its own, `cascade_bench_jobs`, dropped at the end unless --keep. It prints numbers; it never fails on a
slow figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cluster import admin_url_for, create_database, drop_database  # bench/cluster.py
from processes import ROOT, Proc, cascade_argv, free_port, http_status, wait_for  # bench/processes.py
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service.core.database import Database
from service.core.settings import Settings
from service.tenancy.keys import issue_key

DB_NAME = "cascade_bench_jobs"
LABELS = ("positive", "negative", "neutral")
SAMPLES = (
    "I love this product, it works perfectly.",
    "Terrible. Broke after a day and support ignored me.",
    "It arrived on Tuesday.",
    "Not sure how I feel about the new colour.",
    "Best purchase this year!",
    "The manual is in French and German.",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--database-url", help="a PostgreSQL server to use instead of the embedded one")
    parser.add_argument("--data-dir", default=str(ROOT / ".cascade" / "bench"))
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    return parser.parse_args(argv)


def peak_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def ledger_check(url: str) -> dict[str, object]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("""
                    SELECT count(*) AS attempts,
                           count(*) FILTER (WHERE state <> 'settled') AS held,
                           count(*) FILTER (WHERE price_id NOT LIKE '%/batch') AS not_batch_priced,
                           count(*) FILTER (WHERE cost_usd <> (input_tokens * price_input
                               + cache_write_5m_tokens * price_cache_write_5m
                               + cache_write_1h_tokens * price_cache_write_1h
                               + cache_read_tokens * price_cache_read + output_tokens * price_output) / 1000000)
                               AS cost_mismatches,
                           coalesce(sum(cost_usd), 0) AS ledger_usd,
                           count(*) FILTER (WHERE stage = 'strong') AS strong
                    FROM attempts
                    """)
                )
            ).one()
            caps = (
                await conn.execute(
                    text("SELECT spent_usd, reserved_usd FROM caps WHERE scope = 'global' AND period = 'day'")
                )
            ).all()
            requests_usd = await conn.scalar(text("SELECT coalesce(sum(cost_usd), 0) FROM requests"))
    finally:
        await engine.dispose()
    return {
        "attempts": row.attempts,
        "held": row.held,
        "not_batch_priced": row.not_batch_priced,
        "cost_mismatches": row.cost_mismatches,
        "ledger_usd": row.ledger_usd,
        "requests_usd": requests_usd,
        "global_day_spent_usd": sum((c.spent_usd for c in caps), 0),
        "global_day_reserved_usd": sum((c.reserved_usd for c in caps), 0),
        "strong_attempts": row.strong,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    admin_url = admin_url_for(args)
    url = asyncio.run(create_database(admin_url, DB_NAME))
    work = Path(tempfile.mkdtemp(prefix="cascade-bench-jobs-"))
    sim_port, api_port = free_port(), free_port()
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "DATABASE_URL": url,
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sim_port}",
        "CASCADE_DAILY_CAP_USD": "1000000",
        "CASCADE_MONTHLY_CAP_USD": "1000000",
        "CASCADE_JOB_POLL_S": "0.2",
        "CASCADE_LOG_LEVEL": "INFO",
    }
    env |= {k: v for k, v in os.environ.items() if k.startswith("CASCADE_")}  # overrides, e.g. CASCADE_JOB_BATCH_ITEMS
    procs: list[Proc] = []
    try:
        sim = Proc(
            "simulator",
            [*cascade_argv(), "simulator", "--port", str(sim_port), "--batch-processing-s", "0"],
            work / "sim.log",
            env,
        )
        procs.append(sim)
        wait_for(lambda: http_status(f"http://127.0.0.1:{sim_port}/health") is not None, sim, 30, "simulator")
        api = Proc("api", [*cascade_argv(), "serve", "--port", str(api_port)], work / "api.log", env)
        procs.append(api)
        wait_for(lambda: http_status(f"http://127.0.0.1:{api_port}/health/ready") == 200, api, 60, "cascade serve")
        worker = Proc("worker", [*cascade_argv(), "worker"], work / "worker.log", env)
        procs.append(worker)
        settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k != "PATH"})  # type: ignore[call-arg]
        key = asyncio.run(_key(url, settings))
        upload = work / "items.jsonl"
        with upload.open("w") as out:
            for i in range(args.items):
                out.write(json.dumps({"id": f"t{i}", "text": f"{SAMPLES[i % len(SAMPLES)]} (ticket {i})"}) + "\n")
        print(f"{args.items} items, {upload.stat().st_size / 1e6:.1f} MB of JSONL", file=sys.stderr)
        base = f"http://127.0.0.1:{api_port}"
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            started = time.monotonic()
            created = client.post(
                "/v1/jobs/jsonl",
                params=[("labels", label) for label in LABELS],
                content=upload.read_bytes(),
                headers={"Content-Type": "application/x-ndjson"},
            )
            created.raise_for_status()
            job = created.json()
            stored = time.monotonic()
            worker_peak = 0
            while True:
                status = client.get(f"/v1/jobs/{job['id']}").json()
                worker_peak = max(worker_peak, peak_kb(worker.pid) or 0)
                if status["status"] in ("done", "canceled"):
                    break
                if not worker.alive():
                    raise RuntimeError("the worker died:\n" + worker.tail())
                time.sleep(0.2)
            done = time.monotonic()
            lines = 0
            with client.stream("GET", f"/v1/jobs/{job['id']}/results") as response:
                for line in response.iter_lines():
                    lines += 1 if line.strip() else 0
        api_peak = peak_kb(api.pid) or 0
        check = asyncio.run(ledger_check(url))
        seconds = done - started
        print(f"items                       {args.items}")
        print(f"upload and store            {stored - started:.1f} s")
        print(f"submit to done              {seconds:.1f} s ({args.items / seconds:,.0f} items/s)")
        print(f"escalated to the strong     {status['counts']['escalated']}")
        print(f"job cost                    ${status['cost_usd']}")
        print(f"result lines                {lines} (one per item: {lines == args.items})")
        print(f"worker peak memory (VmHWM)  {worker_peak / 1024:.0f} MB")
        print(f"API peak memory (VmHWM)     {api_peak / 1024:.0f} MB")
        for name, value in check.items():
            print(f"ledger {name:<21}{value}")
        print(f"logs in {work}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if not args.keep:
            asyncio.run(drop_database(admin_url, DB_NAME))


async def _key(url: str, settings: Settings) -> str:
    db = Database(url, settings)
    try:
        return await issue_key(db, "bench")
    finally:
        await db.dispose()


if __name__ == "__main__":
    main()
