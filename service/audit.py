"""Reads for auditors and finance, always scoped to the caller's team."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from service.database import Database
from service.errors import NotFound
from service.ledger import LedgerRepository
from service.tables import Attempt, Request


async def request_audit(db: Database, team_id: uuid.UUID, request_id: uuid.UUID) -> tuple[Request, Sequence[Attempt]]:
    """One request and its ledger rows. Another team's id is indistinguishable from a missing one."""
    async with db.transaction() as session:
        ledger = LedgerRepository(session)
        request = await ledger.get_request(request_id, team_id)
        if request is None:
            raise NotFound(f"no request {request_id}")
        return request, await ledger.attempts_of(request_id)
