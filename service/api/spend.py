"""GET /v1/spend: where each cap stands."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api.schemas import CapOut, SpendOut
from service.keys import Caller
from service.runtime import Runtime


@get("/v1/spend", summary="Spend against each cap")
async def spend(caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]) -> SpendOut:
    caps = await runtime.budget.status(caller.team_id)
    return SpendOut(
        caps=[
            CapOut(
                scope=c.scope,
                period=c.period,
                period_start=c.period_start,
                cap_usd=c.cap_usd,
                spent_usd=c.spent_usd,
                reserved_usd=c.reserved_usd,
                remaining_usd=max(c.cap_usd - c.spent_usd - c.reserved_usd, 0),
                overrun_usd=c.overrun_usd,
            )
            for c in caps
        ]
    )
