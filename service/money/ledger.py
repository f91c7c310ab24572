"""The ledger (attempt rows) and request rows: SQL only, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.tables import Attempt, Request


@dataclass(frozen=True)
class HeldReservation:
    attempt_id: int
    request_id: uuid.UUID
    cap_ids: list[int]
    reserved_usd: Decimal
    strong_equiv_usd: Decimal | None = None
    model: str = ""
    stage: str = ""


class LedgerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_request(self, values: dict[str, Any]) -> None:
        await self.session.execute(insert(Request).values(**values).on_conflict_do_nothing(index_elements=["id"]))

    async def settle_attempt(self, attempt_id: int, values: dict[str, Any]) -> HeldReservation | None:
        """Mark a reserved attempt settled; None if it was settled already (by the sweeper)."""
        row = (
            await self.session.execute(
                update(Attempt)
                .where(Attempt.id == attempt_id, Attempt.state == "reserved")
                .values(state="settled", **values)
                .returning(
                    Attempt.request_id, Attempt.cap_ids, Attempt.reserved_usd, Attempt.strong_equiv_usd, Attempt.stage
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return HeldReservation(
            attempt_id, row.request_id, list(row.cap_ids), row.reserved_usd, row.strong_equiv_usd, stage=row.stage
        )

    async def add_request_cost(
        self, request_id: uuid.UUID, cost: Decimal, strong_equiv: Decimal | None, stage: str = "cheap"
    ) -> None:
        """Add an attempt's cost to its request: to the answer's cost, or for a shadow call to its own column."""
        if stage == "shadow":
            values: dict[str, Any] = {"shadow_cost_usd": Request.shadow_cost_usd + cost}
        else:
            values = {
                "cost_usd": Request.cost_usd + cost,
                "all_strong_cost_usd": Request.all_strong_cost_usd + (strong_equiv or Decimal(0)),
            }
        await self.session.execute(update(Request).where(Request.id == request_id).values(**values))

    async def finish_request(self, request_id: uuid.UUID, values: dict[str, Any]) -> None:
        await self.session.execute(update(Request).where(Request.id == request_id).values(**values))

    async def stale_reservations(self, cutoff: datetime, limit: int) -> list[HeldReservation]:
        """Reservations older than `cutoff`, locked; rows another sweeper holds are skipped."""
        rows = await self.session.execute(
            select(
                Attempt.id,
                Attempt.request_id,
                Attempt.cap_ids,
                Attempt.reserved_usd,
                Attempt.strong_equiv_usd,
                Attempt.model,
                Attempt.stage,
            )
            # A Message Batch's requests are its job's worker's to settle (service.money.batch_charges).
            .where(Attempt.state == "reserved", Attempt.reserved_at < cutoff, Attempt.batch_id.is_(None))
            .order_by(Attempt.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [
            HeldReservation(r.id, r.request_id, list(r.cap_ids), r.reserved_usd, r.strong_equiv_usd, r.model, r.stage)
            for r in rows
        ]

    async def held_totals(self) -> tuple[int, Decimal]:
        """How many attempts are reserved and not settled, and the worst case they hold."""
        row = (
            await self.session.execute(
                select(func.count(), func.coalesce(func.sum(Attempt.reserved_usd), 0)).where(
                    Attempt.state == "reserved"
                )
            )
        ).one()
        return int(row[0]), Decimal(row[1])

    async def abandon_stale_requests(self, cutoff: datetime, now: datetime) -> int:
        """Requests whose holder died: mark them failed once none of their attempts is still held."""
        held = select(Attempt.id).where(Attempt.request_id == Request.id, Attempt.state == "reserved").exists()
        # Whether it had escalated, as the holder would have recorded it: the cheap answer's reason, or (a strong
        # attempt without one) an unavailable cheap model.
        cheap_reason = (
            select(Attempt.escalation_reason)
            .where(Attempt.request_id == Request.id, Attempt.stage == "cheap", Attempt.escalation_reason.is_not(None))
            .order_by(Attempt.attempt_no.desc())
            .limit(1)
            .scalar_subquery()
        )
        strong = select(Attempt.id).where(Attempt.request_id == Request.id, Attempt.stage == "strong").exists()
        result = await self.session.execute(
            update(Request)
            .where(Request.status == "pending", Request.created_at < cutoff, Request.job_id.is_(None), ~held)
            .values(
                status="failed",
                error_type="abandoned",
                finished_at=now,
                error_message="the replica serving this request stopped before it finished",
                escalated=strong | cheap_reason.is_not(None),
                escalation_reason=case(
                    (cheap_reason.is_not(None), cheap_reason), (strong, "cheap_unavailable"), else_=None
                ),
            )
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def get_request(self, request_id: uuid.UUID, team_id: uuid.UUID | None) -> Request | None:
        """The request, if it is `team_id`'s (any team's when None)."""
        query = select(Request).where(Request.id == request_id)
        if team_id is not None:
            query = query.where(Request.team_id == team_id)
        return await self.session.scalar(query)

    async def attempts_of(self, request_id: uuid.UUID) -> Sequence[Attempt]:
        return (
            await self.session.scalars(
                select(Attempt).where(Attempt.request_id == request_id).order_by(Attempt.attempt_no)
            )
        ).all()
