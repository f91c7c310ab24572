"""What the jobs tests share: texts, a service with a simulator of its own, uploads, waits and results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from service.core.database import Database
from service.simulator import Simulator, SimulatorConfig
from tests.harness import JOB_WORKER, SENTIMENT, Service, running_service, service_settings

TEXTS = [
    "I love this product, it works perfectly.",
    "Terrible. Broke after a day and support ignored me.",
    "It arrived on Tuesday.",
    "Not sure how I feel about the new colour.",
    "Best purchase this year!",
    "Meh.",
]


@asynccontextmanager
async def own_simulator(
    database_url: str, db: Database, config: SimulatorConfig, **overrides: Any
) -> AsyncIterator[Service]:
    """The service with its worker, against a simulator of its own (the session's `sim` is left as it is)."""
    async with Simulator(config) as simulator:
        settings = service_settings(database_url, simulator, **(JOB_WORKER | overrides))
        async with running_service(settings, database_url, db, simulator) as running:
            yield running


async def post_jsonl(service: Service, upload: bytes, **headers: str) -> httpx.Response:
    """POST /v1/jobs/jsonl with the sentiment labels."""
    return await service.client.post(
        "/v1/jobs/jsonl",
        params=[("labels", label) for label in SENTIMENT],
        content=upload,
        headers=service.auth | {"Content-Type": "application/x-ndjson"} | headers,
    )


async def wait_for(
    service: Service, job_id: str, *, until: tuple[str, ...] = ("done",), timeout_s: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await service.client.get(f"/v1/jobs/{job_id}", headers=service.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in until:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"job still {body['status']}: {body}"
        await asyncio.sleep(0.05)


async def results(service: Service, job_id: str) -> list[dict[str, Any]]:
    response = await service.client.get(f"/v1/jobs/{job_id}/results", headers=service.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def items(n: int) -> list[dict[str, str]]:
    return [{"id": f"item-{i}", "text": f"{TEXTS[i % len(TEXTS)]} (#{i})"} for i in range(n)]
