"""Deterministic model behaviour: the answer, its confidence and usage, and the test directives."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from service.simulator import corpus
from service.simulator.corpus import DIRECTIVE, strip_directives

Family = Literal["cheap", "strong"]

KNOWN_MODELS = frozenset(
    {
        "claude-haiku-4-5-20251001",
        "claude-haiku-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-sonnet-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
    }
)
# Models that think unless the request says {"thinking": {"type": "disabled"}}.
ADAPTIVE_THINKING_MODELS = frozenset({"claude-haiku-5-5"})
# Haiku 5.5's tokenizer counts about 30% more tokens for the same text.
TOKENIZER_FACTOR = {"claude-haiku-5-5": 1.3}

ACCURACY: dict[Family, float] = {"cheap": 0.87, "strong": 0.97}
THINKING_TOKENS = 40
REFUSAL_TEXT = "I can't help with classifying this content."

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES: dict[int, str] = {
    400: "You have reached your specified API usage limits. (simulated)",
    401: "invalid x-api-key (simulated)",
    402: "Your credit balance is too low to access the Anthropic API. (simulated)",
    403: "Your API key does not have permission to use the specified resource. (simulated)",
    404: "The requested resource could not be found. (simulated)",
    413: "Request exceeds the maximum allowed number of bytes. (simulated)",
    429: "Number of request tokens has exceeded your per-minute rate limit. (simulated)",
    500: "Internal server error. (simulated)",
    503: "Service unavailable. (simulated)",
    504: "Request timed out. (simulated)",
    529: "Overloaded. (simulated)",
}
SPEND_CAP_MESSAGE = "You have reached your monthly usage limit for this tier. (simulated)"


def model_family(model: str) -> Family:
    return "cheap" if "haiku" in model else "strong"


# --- behaviours and directives ------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    spec: str = "ok"  # as written in the directive or fault_rates
    status: int | None = None  # an error status instead of an answer
    retry_after: str | None = None  # written verbatim; None on a 429 means "the configured default"
    no_retry_after: bool = False
    slow: bool = False
    slow_seconds: float | None = None  # None means "the configured slow_seconds"
    drop: bool = False
    malformed: bool = False
    garbage: bool = False  # a 200 whose body is not a Message at all
    refusal: bool = False
    max_tokens: bool = False
    thinking: bool = False
    confidence: float | None = None
    label: str | None = None

    def delay(self, slow_seconds: float) -> float:
        """Seconds to stall before answering; slow_seconds is the configured default."""
        if not self.slow:
            return 0.0
        return self.slow_seconds if self.slow_seconds is not None else slow_seconds


OK = Behaviour()

_STATUS = re.compile(r"(\d{3})(?::(\d+(?:\.\d*)?|\.\d+))?")
_SLOW = re.compile(r"slow(?::(\d+(?:\.\d*)?|\.\d+))?")
_FLAGS: dict[str, Callable[[Behaviour], Behaviour]] = {
    "drop": lambda b: replace(b, drop=True),
    "malformed": lambda b: replace(b, malformed=True),
    "garbage": lambda b: replace(b, garbage=True),
    "refusal": lambda b: replace(b, refusal=True),
    "max_tokens": lambda b: replace(b, max_tokens=True),
    "thinking": lambda b: replace(b, thinking=True),
}


def parse_behaviour(token: str) -> Behaviour:
    """Parse one behaviour such as `429:0.05`, `slow:2.5` or `label=spam+conf=0.99`."""
    token = token.strip()
    result = Behaviour(spec=token)
    if not token:
        raise ValueError("empty behaviour")
    for part in token.split("+"):
        part = part.strip()
        if status_match := _STATUS.fullmatch(part):
            status = int(status_match.group(1))
            if status not in ERROR_TYPES:
                raise ValueError(f"unsupported status {status} in behaviour {token!r}")
            result = replace(result, status=status, retry_after=status_match.group(2))
        elif part == "429nora":
            result = replace(result, status=429, no_retry_after=True)
        elif slow_match := _SLOW.fullmatch(part):
            seconds = slow_match.group(1)
            result = replace(result, slow=True, slow_seconds=float(seconds) if seconds else None)
        elif part in _FLAGS:
            result = _FLAGS[part](result)
        elif part.startswith("conf="):
            try:
                result = replace(result, confidence=float(part.removeprefix("conf=")))
            except ValueError:
                raise ValueError(f"bad confidence in behaviour {token!r}") from None
        elif part.startswith("label="):
            result = replace(result, label=part.removeprefix("label="))
        elif part != "ok":
            raise ValueError(f"unknown behaviour {part!r}")
    return result


GROUPS = ("cheap", "strong", "all")


def parse_directives(text: str) -> dict[str, tuple[Behaviour, ...]]:
    """Every `{{sim:GROUP=B1,B2;GROUP=...}}` in the text, as group -> behaviours of successive calls."""
    plans: dict[str, tuple[Behaviour, ...]] = {}
    for match in DIRECTIVE.finditer(text):
        for clause in match.group(1).split(";"):
            if not clause.strip():
                continue
            group, sep, behaviours = clause.partition("=")
            group = group.strip()
            if not sep or group not in GROUPS:
                raise ValueError(f"bad directive clause {clause!r}: expected cheap=, strong= or all=")
            plans[group] = tuple(parse_behaviour(token) for token in behaviours.split(","))
    return plans


def plan_for(plans: dict[str, tuple[Behaviour, ...]], family: Family) -> tuple[Behaviour, ...]:
    # A family's own list wins over `all`.
    return plans.get(family) or plans.get("all") or ()


# --- the answer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    label: str
    confidence: float
    truth: str

    @property
    def correct(self) -> bool:
        return self.label == self.truth


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=64).digest()


def _unit(digest: bytes, index: int) -> float:
    """The index-th independent uniform draw in [0, 1) from a digest."""
    return int.from_bytes(digest[8 * index : 8 * index + 8], "big") / 2**64


@functools.cache
def _corpus_positions(seed: int, family: Family) -> dict[str, float]:
    # Over the bundled corpus, rank the samples by their hash instead of drawing independently, so the
    # share of right answers equals the target accuracy for every seed (an independent draw over ~370
    # samples lands outside 85-90% for about one seed in six).
    ordered = sorted(corpus.SAMPLES, key=lambda sample: _digest(f"{seed}|{family}|{sample.text}"))
    return {sample.text: (rank + 0.5) / len(ordered) for rank, sample in enumerate(ordered)}


@dataclass(frozen=True)
class Calibration:
    """Where a model's stated confidence falls: right answers are mostly `confident`, a `hesitant_share` of
    them `hesitant`; wrong answers fall in `wrong` (uniformly, in each range)."""

    confident: tuple[float, float]
    hesitant: tuple[float, float]
    hesitant_share: float
    wrong: tuple[float, float]


# Overconfident like a real model: right answers mostly 0.86-0.99 with a hesitant tail (0.60-0.85) that makes
# the threshold matter; wrong answers spread over 0.45-0.95, so 0.85 catches ~80% of them.
DEFAULT_CALIBRATION = Calibration((0.86, 0.99), (0.60, 0.85), 0.12, (0.45, 0.95))
# How well the cheap model's confidence tells right from wrong differs by task (Xiong et al., ICLR 2024), which
# is why one threshold for every task leaves money or accuracy on the table. On the bundled sentiment texts it
# is well calibrated (its mistakes are all below 0.73, so a lower threshold keeps its hesitant right answers);
# on moderation it is overconfident (most mistakes above 0.85, so 0.85 lets them through).
CALIBRATION = {
    "sentiment": Calibration((0.86, 0.99), (0.73, 0.85), 0.15, (0.35, 0.72)),
    "moderation": Calibration((0.86, 0.99), (0.60, 0.85), 0.10, (0.70, 0.97)),
}


def hidden_truth(text: str, labels: Sequence[str]) -> str:
    """The corpus truth, or for an unknown text a stable hash-chosen label (independent of model and seed)."""
    clean = strip_directives(text)
    truth = corpus.truth_for(clean, labels)
    if truth is not None:
        return truth
    return labels[int(_unit(_digest(f"truth|{clean}"), 0) * len(labels))]


def classify(seed: int, model: str, text: str, labels: Sequence[str]) -> Answer:
    if not labels:
        raise ValueError("no labels to choose from")
    clean = strip_directives(text)
    family = model_family(model)
    digest = _digest(f"{seed}|{family}|{clean}")
    truth = hidden_truth(clean, labels)
    sample = corpus.sample_for(clean)
    if sample is not None and sample.truth in labels:
        position = _corpus_positions(seed, family)[sample.text]
    else:
        position = _unit(digest, 0)
    others = [label for label in labels if label != truth]
    correct = position < ACCURACY[family] or not others
    hesitant, spread = _unit(digest, 1), _unit(digest, 2)
    shape = CALIBRATION.get(sample.task, DEFAULT_CALIBRATION) if sample is not None else DEFAULT_CALIBRATION
    if family == "strong":
        shape = DEFAULT_CALIBRATION
    if correct:
        low, high = shape.hesitant if hesitant < shape.hesitant_share else shape.confident
        label = truth
    else:
        low, high = shape.wrong
        label = others[int(_unit(digest, 3) * len(others))]
    return Answer(label=label, confidence=round(low + (high - low) * spread, 2), truth=truth)


# --- usage ----------------------------------------------------------------------------------------


def input_tokens(model: str, prompt_bytes: int) -> int:
    tokens = math.ceil(prompt_bytes / 4) + 8
    if factor := TOKENIZER_FACTOR.get(model):
        tokens = math.ceil(tokens * factor)
    # The service reserves money by byte length + 8; a tiny prompt on Haiku 5.5 would otherwise exceed it.
    return min(tokens, prompt_bytes + 8)


def prefix_tokens(model: str, prefix_bytes: int) -> int:
    """A cached prefix's tokens, counted as the whole prompt's are (without the per-request framing)."""
    tokens = math.ceil(prefix_bytes / 4)
    if factor := TOKENIZER_FACTOR.get(model):
        tokens = math.ceil(tokens * factor)
    return tokens


# The shortest prefix each model caches; a shorter marked prefix is billed as plain input.
MIN_CACHE_TOKENS = {"claude-haiku-4-5-20251001": 4096, "claude-haiku-4-5": 4096, "claude-haiku-5-5": 4096}
DEFAULT_MIN_CACHE_TOKENS = 1024
CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}


def output_tokens(text: str) -> int:
    return math.ceil(len(text) / 3) + 1


@dataclass(frozen=True)
class Reply:
    content: list[dict[str, Any]]
    stop_reason: str
    output_tokens: int


def answer_text(answer: Answer, behaviour: Behaviour, *, structured: bool) -> str:
    label = behaviour.label if behaviour.label is not None else answer.label
    confidence = behaviour.confidence if behaviour.confidence is not None else answer.confidence
    if not structured:
        return label
    return json.dumps({"label": label, "confidence": confidence})


def reply(text: str, behaviour: Behaviour, *, max_tokens: int, thinks: bool) -> Reply:
    """Shape the answer text into content blocks, a stop reason and billed output tokens."""
    stop_reason = "end_turn"
    if behaviour.refusal:
        text, stop_reason = REFUSAL_TEXT, "refusal"
    elif behaviour.malformed:
        cut = text.find('"confidence"')
        text = text[: cut + 7] if cut >= 0 else text[: max(1, len(text) // 2)]
    elif behaviour.max_tokens:
        text, stop_reason = text[: max(1, len(text) // 2)], "max_tokens"

    thinking_tokens = THINKING_TOKENS if thinks and not behaviour.refusal else 0
    used = thinking_tokens + output_tokens(text)
    if behaviour.max_tokens or used > max_tokens:
        # Thinking counts toward max_tokens: what is left of the budget is all the answer gets.
        budget = max_tokens - thinking_tokens - 1
        if budget <= 0:
            text = ""
        elif not behaviour.max_tokens:
            text = text[: budget * 3]
        stop_reason, used = "max_tokens", max_tokens

    content: list[dict[str, Any]] = []
    if thinking_tokens:
        content.append(
            {
                "type": "thinking",
                "thinking": "Weighing the labels against the text. (simulated)",
                "signature": "sim",
            }
        )
    if text:
        content.append({"type": "text", "text": text})
    return Reply(content=content, stop_reason=stop_reason, output_tokens=min(used, max_tokens))
