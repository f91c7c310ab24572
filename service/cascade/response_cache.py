"""The exact-match response cache of named tasks.

The same text, normalized, under the same task version, threshold and model pair gets the answer the cascade
gave it before, at once and at no cost, for the version's `cache_ttl_s`. Entries are per team. Only final
answers are kept (a failed request is never cached), and a hit is a request of its own in the ledger
(`cache_hit`, `cached_from`, no attempts, cost 0), so the reports count it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from service.core.database import Database
from service.tables import CachedResponse

_SPACE = re.compile(r"\s+")


def normalized(text: str) -> str:
    """What makes two texts the same one: Unicode NFC, surrounding white space dropped, inner runs of white
    space as one space. Case and punctuation are kept (they can change a label)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def cache_key(version_id: uuid.UUID, threshold: Decimal, cheap: str, strong: str, text: str) -> str:
    text_hash = hashlib.sha256(normalized(text).encode()).hexdigest()
    parts = [str(version_id), format(threshold.normalize(), "f"), cheap, strong, text_hash]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class ResponseCache:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def lookup(self, team_id: uuid.UUID, key: str, now: datetime) -> CachedResponse | None:
        async with self.db.autocommit() as connection:
            row = (
                await connection.execute(
                    select(CachedResponse).where(
                        CachedResponse.team_id == team_id, CachedResponse.key == key, CachedResponse.expires_at > now
                    )
                )
            ).first()
        return None if row is None else CachedResponse(**row._mapping)

    async def store(
        self,
        team_id: uuid.UUID,
        key: str,
        answer: tuple[str, Decimal, str],
        request_id: uuid.UUID,
        now: datetime,
        ttl_s: int,
    ) -> None:
        """Keep (label, confidence, model) for `ttl_s`; a newer answer for the same key replaces the older."""
        label, confidence, model = answer
        values = {
            "label": label,
            "confidence": confidence,
            "model": model,
            "request_id": request_id,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_s),
        }
        statement = insert(CachedResponse).values(team_id=team_id, key=key, **values)
        async with self.db.autocommit() as connection:
            await connection.execute(statement.on_conflict_do_update(index_elements=["team_id", "key"], set_=values))

    async def purge_expired(self, now: datetime) -> int:
        async with self.db.transaction() as session:
            result = await session.execute(delete(CachedResponse).where(CachedResponse.expires_at <= now))
        return int(result.rowcount)  # type: ignore[attr-defined]
