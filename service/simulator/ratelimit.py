"""The rate limits the simulator reports: requests and tokens used in a one-minute window, as the
`anthropic-ratelimit-*` headers of every answer. Nothing is refused for going over them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# Plausible tier-4 limits; the remaining counts fall within a one-minute window.
REQUESTS_LIMIT = 4_000
INPUT_TOKENS_LIMIT = 4_000_000
OUTPUT_TOKENS_LIMIT = 800_000
WINDOW_SECONDS = 60.0


@dataclass
class RateWindow:
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def charge(self, input_tokens: int, max_tokens: int) -> None:
        if time.monotonic() - self.started >= WINDOW_SECONDS:
            self.started, self.requests, self.input_tokens, self.output_tokens = time.monotonic(), 0, 0, 0
        self.requests += 1
        self.input_tokens += input_tokens
        # Output-token limits are charged from max_tokens when a request starts, as the real API does.
        self.output_tokens += max_tokens

    def headers(self) -> list[tuple[str, str]]:
        left = max(0.0, self.started + WINDOW_SECONDS - time.monotonic())
        reset = (datetime.now(UTC) + timedelta(seconds=left)).strftime("%Y-%m-%dT%H:%M:%SZ")
        input_left = max(0, INPUT_TOKENS_LIMIT - self.input_tokens)
        output_left = max(0, OUTPUT_TOKENS_LIMIT - self.output_tokens)
        return [
            ("anthropic-ratelimit-requests-limit", str(REQUESTS_LIMIT)),
            ("anthropic-ratelimit-requests-remaining", str(max(0, REQUESTS_LIMIT - self.requests))),
            ("anthropic-ratelimit-requests-reset", reset),
            ("anthropic-ratelimit-tokens-limit", str(INPUT_TOKENS_LIMIT + OUTPUT_TOKENS_LIMIT)),
            ("anthropic-ratelimit-tokens-remaining", str(input_left + output_left)),
            ("anthropic-ratelimit-tokens-reset", reset),
            ("anthropic-ratelimit-input-tokens-limit", str(INPUT_TOKENS_LIMIT)),
            ("anthropic-ratelimit-input-tokens-remaining", str(input_left)),
            ("anthropic-ratelimit-input-tokens-reset", reset),
            ("anthropic-ratelimit-output-tokens-limit", str(OUTPUT_TOKENS_LIMIT)),
            ("anthropic-ratelimit-output-tokens-remaining", str(output_left)),
            ("anthropic-ratelimit-output-tokens-reset", reset),
        ]
