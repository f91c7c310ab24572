"""GET /v1/spend: where the caller's team stands against its caps."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from service.api.errors import documented
from service.api.schemas.teams import CapOut, SpendOut
from service.money.caps import UNCAPPED
from service.runtime import Runtime
from service.tables import Cap
from service.tenancy.keys import Caller


def cap_out(cap: Cap) -> CapOut:
    capped = cap.cap_usd < UNCAPPED
    return CapOut(
        scope=cap.scope,
        period=cap.period,
        period_start=cap.period_start,
        cap_usd=cap.cap_usd if capped else None,
        spent_usd=cap.spent_usd,
        reserved_usd=cap.reserved_usd,
        remaining_usd=max(cap.cap_usd - cap.spent_usd - cap.reserved_usd, 0) if capped else None,
        overrun_usd=cap.overrun_usd,
    )


@get("/v1/spend", summary="The caller's team: spend against each of its caps", responses=documented(401, 503))
async def spend(caller: NamedDependency[Caller], runtime: NamedDependency[Runtime]) -> SpendOut:
    return SpendOut(caps=[cap_out(c) for c in await runtime.budget.status(caller.team_id)])
