"""Per-team request rate limits: a token bucket per team, in each process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from service.core.errors import RateLimited


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}  # team -> (tokens, last refill)

    def acquire(self, team_id: uuid.UUID) -> None:
        now = self.clock()
        tokens, last = self._buckets.get(team_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[team_id] = (tokens, now)
            raise RateLimited(
                f"this team is limited to {self.rate:g} requests per second (bursts of {self.burst:g})",
                retry_after_s=(1 - tokens) / self.rate,
            )
        self._buckets[team_id] = (tokens - 1, now)
