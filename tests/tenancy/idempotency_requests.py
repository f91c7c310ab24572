"""The Idempotency-Key tests' requests: POST /v1/classify under a key, and what they count afterwards."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from service.core.database import Database
from service.simulator import Simulator
from service.tables import Request
from tests.harness import SENTIMENT, Service

CONFIDENT = "{{sim:cheap=conf=0.95}} The blender arrived on time and works fine."
SLOW = "{{sim:cheap=slow:1.5+conf=0.95}} The kettle arrived on time and works fine."


async def post(
    svc: Service, text: str, key: str | None, *, auth: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    headers = dict(auth or svc.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await svc.client.post("/v1/classify", json={"text": text, "labels": SENTIMENT, **fields}, headers=headers)


async def count(db: Database, table: type[Any]) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def request_ids(db: Database) -> list[uuid.UUID]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Request.id).order_by(Request.created_at))).all())


def messages(sim: Simulator) -> int:
    return sum(1 for c in sim.calls if c.endpoint == "messages")
