"""Idempotency-Key with Stripe's semantics, scoped to the team and kept 24 hours.

The same key and body replay the stored response and charge nothing; the same key with another body is
422; the same key while the first request is still running is 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert

from service.core.database import Database
from service.core.errors import IdempotencyInFlight, IdempotencyKeyReused
from service.tables import IdempotencyKey

KEEP_FOR = timedelta(hours=24)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]


def body_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(self, db: Database, clock: Callable[[], datetime], in_flight_ttl_s: float) -> None:
        self.db = db
        self.clock = clock
        # A claim whose holder has not renewed it for this long (its replica died) may be taken over.
        self.in_flight_ttl = timedelta(seconds=in_flight_ttl_s)

    async def begin(self, team_id: uuid.UUID, key: str, digest: str, request_id: uuid.UUID) -> StoredResponse | None:
        """Claim the key for this request (None: go ahead), or return the stored response, or refuse."""
        now = self.clock()
        table = IdempotencyKey.__table__
        claim = (
            insert(IdempotencyKey)
            .values(
                team_id=team_id,
                key=key,
                body_hash=digest,
                state="in_flight",
                request_id=request_id,
                created_at=now,
                alive_at=now,
            )
            .on_conflict_do_update(
                index_elements=["team_id", "key"],
                set_={
                    "body_hash": digest,
                    "state": "in_flight",
                    "request_id": request_id,
                    "response_status": None,
                    "response_body": None,
                    "created_at": now,
                    "alive_at": now,
                },
                where=(table.c.created_at < now - KEEP_FOR)
                | (
                    (table.c.state == "in_flight")
                    & (table.c.alive_at < now - self.in_flight_ttl)
                    & (table.c.body_hash == digest)
                ),
            )
            .returning(IdempotencyKey.request_id)
        )
        async with self.db.transaction() as session:
            if await session.scalar(claim) == request_id:
                return None
            row = await session.scalar(
                select(IdempotencyKey).where(IdempotencyKey.team_id == team_id, IdempotencyKey.key == key)
            )
        assert row is not None
        if row.body_hash != digest:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body")
        if row.state == "in_flight" or row.response_status is None or row.response_body is None:
            raise IdempotencyInFlight("a request with this Idempotency-Key is still in progress")
        return StoredResponse(row.response_status, row.response_body)

    @contextlib.asynccontextmanager
    async def kept_alive(self, team_id: uuid.UUID, key: str, request_id: uuid.UUID) -> AsyncIterator[None]:
        """Renew the claim every third of the TTL while the work runs, so that a request longer than the TTL
        (a synchronous batch of a thousand items) is not taken over by a retry while its holder lives."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.in_flight_ttl.total_seconds() / 3)
                try:
                    await self._renew(team_id, key, request_id)
                except Exception:  # a missed beat only shortens the claim; the next one may get through
                    logger.warning("could not renew Idempotency-Key claim of request %s", request_id, exc_info=True)

        heart = asyncio.create_task(beat())
        try:
            yield
        finally:
            heart.cancel()  # not awaited: awaiting it here could swallow a cancellation of the caller

    async def _renew(self, team_id: uuid.UUID, key: str, request_id: uuid.UUID) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.team_id == team_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.request_id == request_id,
                    IdempotencyKey.state == "in_flight",
                )
                .values(alive_at=self.clock())
            )

    async def finish(
        self, team_id: uuid.UUID, key: str, request_id: uuid.UUID, status: int, body: dict[str, Any]
    ) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.team_id == team_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.request_id == request_id,
                )
                .values(state="done", response_status=status, response_body=body)
            )

    async def abandon(self, team_id: uuid.UUID, key: str, request_id: uuid.UUID) -> None:
        """Forget the claim so that a retry runs again (transient failures are not stored)."""
        async with self.db.transaction() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.team_id == team_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.request_id == request_id,
                )
            )

    async def purge_expired(self) -> int:
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.created_at < self.clock() - KEEP_FOR)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]
