"""The only retry layer: full-jitter backoff that honours retry-after, bounded by attempts and a deadline."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from service.cascade.upstream import UpstreamFailure

# An attempt started with less time than this left cannot finish; don't spend money on it.
MIN_ATTEMPT_S = 0.25


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


class FullJitter(wait_base):
    """sleep = random(0, min(cap, base * 2**n)), or exactly what the upstream's retry-after asks."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, UpstreamFailure) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return random.uniform(0, min(self.cap, self.base * 2 ** (retry_state.attempt_number - 1)))


class StopAtDeadline(stop_base):
    """Give up when the next attempt could not start in time to finish before the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.deadline.remaining() - retry_state.upcoming_sleep < MIN_ATTEMPT_S


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamFailure) and exc.retryable


def retrying(deadline: Deadline, max_attempts: int, base_s: float, cap_s: float) -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts) | StopAtDeadline(deadline),
        wait=FullJitter(base_s, cap_s),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )
