"""The escalation policy: a pure function of the cheap model's answer and the threshold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

CONFIDENCE_QUANTUM = Decimal("0.000001")


class EscalationReason(StrEnum):
    LOW_CONFIDENCE = "low_confidence"
    INVALID_ANSWER = "invalid_answer"
    REFUSED = "refused"
    TRUNCATED = "truncated"
    CHEAP_UNAVAILABLE = "cheap_unavailable"


@dataclass(frozen=True)
class Answer:
    label: str
    confidence: Decimal


@dataclass(frozen=True)
class Defect:
    """The model answered (and was billed) but gave nothing usable."""

    reason: EscalationReason
    detail: str


@dataclass(frozen=True)
class Unavailable:
    """The model could not be reached after the retries the deadline allowed."""

    detail: str
    retry_after_s: float | None = None


Verdict = Answer | Defect | Unavailable


def read_answer(text: str | None, stop_reason: str | None, labels: Sequence[str]) -> Answer | Defect:
    """Turn a model's reply into an Answer, or say precisely why it is not one."""
    if stop_reason == "refusal":
        return Defect(EscalationReason.REFUSED, "the model refused to classify the text")
    if stop_reason in {"max_tokens", "model_context_window_exceeded"}:
        return Defect(EscalationReason.TRUNCATED, f"the answer was cut off ({stop_reason})")
    if not text:
        return Defect(EscalationReason.INVALID_ANSWER, f"no text block in the reply (stop_reason {stop_reason})")
    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except (ValueError, InvalidOperation, RecursionError):
        return Defect(EscalationReason.INVALID_ANSWER, "the answer is not valid JSON")
    if not isinstance(data, dict) or set(data) != {"label", "confidence"}:
        return Defect(EscalationReason.INVALID_ANSWER, "the answer does not match the schema")
    label, confidence = data["label"], data["confidence"]
    if not isinstance(label, str) or label not in labels:
        return Defect(EscalationReason.INVALID_ANSWER, f"label {label!r} is not one of the allowed labels")
    if not isinstance(confidence, Decimal) or not confidence.is_finite() or not 0 <= confidence <= 1:
        return Defect(EscalationReason.INVALID_ANSWER, f"confidence {confidence!r} is outside 0..1")
    # Read to the precision the ledger stores, so the recorded value is the one the decision used.
    return Answer(label, confidence.quantize(CONFIDENCE_QUANTUM))


def escalation(verdict: Verdict, threshold: Decimal) -> EscalationReason | None:
    """None keeps the cheap answer; otherwise the reason the request goes to the strong model."""
    if isinstance(verdict, Unavailable):
        return EscalationReason.CHEAP_UNAVAILABLE
    if isinstance(verdict, Defect):
        return verdict.reason
    if verdict.confidence < threshold:
        return EscalationReason.LOW_CONFIDENCE
    return None
