from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.simulator.behaviour import parse_behaviour


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 7
    latency_ms: float = 0.0  # base latency of a successful call
    latency_per_output_token_ms: float = 0.0
    latency_jitter_ms: float = 0.0  # uniform in [0, jitter]
    slow_seconds: float = 30.0  # how long a "slow" fault sleeps before answering
    # Random faults keyed by behaviour token, e.g. {"429": 0.05, "529": 0.05, "drop": 0.01}.
    fault_rates: Mapping[str, float] = field(default_factory=dict)
    retry_after_seconds: float = 1.0  # retry-after of a plain "429" fault
    # Message Batches: how long a batch stays in_progress, and the share of its requests that expire.
    batch_processing_s: float = 0.0
    batch_expire_rate: float = 0.0
    batch_max_bytes: int = 256_000_000  # a larger batch creation is refused with 413, as the API does

    def __post_init__(self) -> None:
        for token, rate in self.fault_rates.items():
            parse_behaviour(token)  # raises ValueError on a token the simulator would not understand
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate of {token!r} must be within [0, 1], got {rate}")
        if sum(self.fault_rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        latencies = (
            self.latency_ms,
            self.latency_per_output_token_ms,
            self.latency_jitter_ms,
            self.slow_seconds,
            self.batch_processing_s,
        )
        if not 0.0 <= self.batch_expire_rate <= 1.0:
            raise ValueError(f"batch_expire_rate must be within [0, 1], got {self.batch_expire_rate}")
        if min(latencies) < 0:
            raise ValueError("latencies must not be negative")
