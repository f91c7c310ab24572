"""A synchronous batch: the cascade over many texts of one task, each item reserved and charged on its own.

Items run with bounded concurrency and every item ends in a result or an error of its own, in input order;
one item's failure (a refused cap, an upstream error, bad input) never fails the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

from service.cascade.classification import Classification, ClassifyCommand
from service.cascade.service import Cascade
from service.core.errors import CascadeError
from service.core.logs import ACCESS_LOGGER, annotate, close_fields, open_fields
from service.tenancy.ratelimit import RateLimiter

logger = logging.getLogger(ACCESS_LOGGER)


@dataclass(frozen=True)
class BatchItem:
    index: int
    client_id: str | None
    request_id: uuid.UUID
    command: ClassifyCommand | None  # None: the item was refused before it could run
    refused: CascadeError | None = None


@dataclass(frozen=True)
class ItemOutcome:
    item: BatchItem
    result: Classification | None
    error: CascadeError | None


class BatchRunner:
    def __init__(self, cascade: Cascade, limiter: RateLimiter, concurrency: int) -> None:
        self.cascade = cascade
        self.limiter = limiter
        self.concurrency = concurrency

    async def run(self, batch_id: uuid.UUID, team_id: uuid.UUID, items: list[BatchItem]) -> list[ItemOutcome]:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(item: BatchItem) -> ItemOutcome:
            if item.command is None:
                return ItemOutcome(item, None, item.refused)
            async with slots:
                return await self._classify(batch_id, team_id, item, item.command)

        outcomes = await asyncio.gather(*(one(item) for item in items))
        annotate(
            items=len(items),
            items_ok=sum(1 for o in outcomes if o.result is not None),
            cost_usd=str(sum((o.result.cost_usd for o in outcomes if o.result is not None), start=Decimal(0))),
        )
        return outcomes

    async def _classify(
        self, batch_id: uuid.UUID, team_id: uuid.UUID, item: BatchItem, command: ClassifyCommand
    ) -> ItemOutcome:
        # Each item is a request of its own: its own log line (this task's context gets its own field dict).
        fields, token = open_fields(
            request_id=str(item.request_id), batch_id=str(batch_id), index=item.index, path="/v1/classify/batch"
        )
        started = time.monotonic()
        try:
            self.limiter.acquire(team_id)
            return ItemOutcome(item, await self.cascade.classify(command), None)
        except CascadeError as exc:
            fields["error_type"] = exc.type
            return ItemOutcome(item, None, exc)
        except Exception:
            logger.exception("batch %s item %d failed unexpectedly", batch_id, item.index)
            return ItemOutcome(item, None, CascadeError("an internal error occurred; it has been logged"))
        finally:
            fields["latency_ms"] = round((time.monotonic() - started) * 1000, 2)
            logger.info("batch item %d", item.index, extra={"fields": fields})
            close_fields(token)
