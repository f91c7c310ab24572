"""What every family shares: money as a decimal string (never a float), token counts, a price row, the error shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer


def money_str(amount: Decimal) -> str:
    """Money on the wire: a plain decimal string, without exponent or trailing zeros."""
    return format(amount.normalize(), "f") if amount else "0"


MoneyStr = Annotated[Decimal, PlainSerializer(money_str, return_type=str, when_used="json")]


# Report ratios are exact decimal strings (quantized, documented), like money.
RateStr = MoneyStr
# Confidence and thresholds are probabilities, not money: JSON numbers on the wire.
Confidence = float


class Tokens(BaseModel):
    input: int | None
    cache_write_5m: int | None
    cache_write_1h: int | None
    cache_read: int | None
    output: int | None


class PriceOut(BaseModel):
    id: str
    input_per_mtok: MoneyStr
    cache_write_5m_per_mtok: MoneyStr
    cache_write_1h_per_mtok: MoneyStr
    cache_read_per_mtok: MoneyStr
    output_per_mtok: MoneyStr


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # `field`, `cap`, `remaining_usd` where they apply

    type: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
    request_id: str | None
