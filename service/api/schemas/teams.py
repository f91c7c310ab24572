"""Teams, keys, caps and spend: the admin API's and GET /v1/spend's."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.common import MoneyStr


class CapOut(BaseModel):
    scope: str
    period: str
    period_start: date
    cap_usd: MoneyStr | None = Field(description="null: no cap of its own (spend is still counted)")
    spent_usd: MoneyStr
    reserved_usd: MoneyStr
    remaining_usd: MoneyStr | None
    overrun_usd: MoneyStr


class SpendOut(BaseModel):
    caps: list[CapOut]


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Team name: letters, digits, '_', '.', '-'.",
    )
    daily_usd: Decimal | None = Field(default=None, ge=0, lt=10**9, description="The team's daily cap, USD.")
    monthly_usd: Decimal | None = Field(default=None, ge=0, lt=10**9, description="The team's monthly cap, USD.")


class CapsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daily_usd: Decimal | None = Field(ge=0, lt=10**9, description="Daily cap in USD; null removes it.")
    monthly_usd: Decimal | None = Field(ge=0, lt=10**9, description="Monthly cap in USD; null removes it.")


class TeamOut(BaseModel):
    id: uuid.UUID
    name: str
    daily_usd: MoneyStr | None
    monthly_usd: MoneyStr | None
    created_at: datetime


class KeyOut(BaseModel):
    id: uuid.UUID
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class IssuedKeyOut(BaseModel):
    id: uuid.UUID
    team: str
    prefix: str
    key: str = Field(description="Shown once; only its SHA-256 hash is stored.")


class AdminCapOut(CapOut):
    team: str | None


class AdminSpendOut(BaseModel):
    caps: list[AdminCapOut]
