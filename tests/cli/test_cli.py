"""The `cascade` command as an operator runs it: keys, migrate, serve (and its refusal to fake)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
from sqlalchemy import select

from service.core.database import Database
from service.simulator import Simulator
from service.tables import ApiKey
from service.tenancy.keys import hash_key
from tests.harness import ADMIN, SENTIMENT, Service
from tests.processes import CASCADE, clean_env, free_port, run


async def test_keys_create_prints_the_key_once_and_stores_only_its_hash(database_url: str, db: Database) -> None:
    code, out, err = await run("keys", "create", "--team", "web", env=clean_env(DATABASE_URL=database_url))
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert key.startswith("csk_") and len(key) > 40
    async with db.transaction() as session:
        stored = (await session.scalars(select(ApiKey))).all()
    assert [k.key_hash for k in stored] == [hash_key(key)]
    assert key not in {k.key_hash for k in stored} and stored[0].prefix == key[:12]


async def test_migrate_is_idempotent(database_url: str) -> None:
    code, out, err = await run("migrate", env=clean_env(DATABASE_URL=database_url))
    assert code == 0, err
    assert "head" in out


async def test_serve_refuses_to_start_without_an_api_key(database_url: str) -> None:
    code, _, err = await run("serve", "--port", str(free_port()), env=clean_env(DATABASE_URL=database_url))
    assert code == 2
    assert "ANTHROPIC_API_KEY is not set" in err
    assert "never fakes" in err


async def test_serve_refuses_a_retired_model(database_url: str) -> None:
    env = clean_env(DATABASE_URL=database_url, ANTHROPIC_API_KEY="k", CASCADE_STRONG_MODEL="claude-sonnet-5")
    code, _, err = await run("serve", "--port", str(free_port()), env=env)
    assert code == 2
    assert "no price" in err


async def test_serve_answers_classify_over_http(database_url: str, sim: Simulator) -> None:
    _, out, _ = await run("keys", "create", "--team", "ops", env=clean_env(DATABASE_URL=database_url))
    key = out.strip().splitlines()[-1]
    port = free_port()
    env = clean_env(DATABASE_URL=database_url, ANTHROPIC_API_KEY="sim", ANTHROPIC_BASE_URL=sim.url)
    server = await asyncio.create_subprocess_exec(
        CASCADE,
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("cascade serve did not become ready")
            response = await client.post(
                "/v1/classify",
                json={"text": "Great kettle. {{sim:cheap=conf=0.95}}", "labels": SENTIMENT},
                headers={"x-api-key": key},
            )
            assert response.status_code == 200, response.text
            assert response.json()["label"] in SENTIMENT
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=30)


async def test_report_prints_the_apis_figures_as_json_csv_and_a_table(admin_service: Service) -> None:
    for text in ["I love it", "{{sim:cheap=conf=0.2}} meh", "terrible"]:
        assert (await admin_service.classify(text)).status_code == 200
    env = clean_env(DATABASE_URL=str(admin_service.settings.database_url))
    today = datetime.now(UTC).date()
    start, end = (today - timedelta(days=1)).isoformat(), (today + timedelta(days=2)).isoformat()
    window = {"start": start, "end": end, "group_by": "task"}
    response = await admin_service.client.get("/v1/reports/costs", params=window, headers=ADMIN)
    assert response.status_code == 200, response.text
    api = response.json()
    args = ("report", "costs", "--since", window["start"], "--until", window["end"], "--group-by", "task")

    code, out, err = await run(*args, "--format", "json", env=env)
    assert code == 0, err
    cli = json.loads(out)
    assert cli["buckets"] == api["buckets"] and cli["totals"] == api["totals"]

    code, out, err = await run(*args, "--format", "csv", env=env)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["bucket"] for r in rows] == [b["key"] for b in api["buckets"]] + ["total"]
    assert Decimal(rows[-1]["cost_usd"]) == Decimal(api["totals"]["cost_usd"])

    code, out, err = await run(*args, env=env)
    assert code == 0, err
    assert "costs by task, all teams" in out and "Break-even escalation rate" in out

    code, _, err = await run("report", "costs", "--group-by", "hour", env=env)
    assert code == 1 and "group_by" in err
