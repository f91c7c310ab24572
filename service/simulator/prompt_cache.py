"""The simulator's prompt cache: which marked system-prompt prefixes each model holds, and until when."""

from __future__ import annotations

import hashlib
import time

from service.simulator import behaviour
from service.simulator.request import ParsedRequest


class PromptCache:
    def __init__(self) -> None:
        self._expiry: dict[tuple[str, str], float] = {}  # (model, prefix hash) -> expiry (monotonic)

    def clear(self) -> None:
        self._expiry.clear()

    def use(self, parsed: ParsedRequest) -> tuple[dict[str, int], int]:
        """Prompt caching as the API does it: a marked prefix at least the model's minimum long is read from the
        cache when the same model cached the same prefix within its TTL (which the read renews), else written
        for the TTL asked. Returns (tokens written per TTL, tokens read)."""
        tokens = parsed.prefix_tokens
        minimum = behaviour.MIN_CACHE_TOKENS.get(parsed.model, behaviour.DEFAULT_MIN_CACHE_TOKENS)
        if parsed.cache_prefix is None or parsed.cache_ttl is None or tokens < minimum:
            return {}, 0
        key = (parsed.model, hashlib.sha256(parsed.cache_prefix.encode()).hexdigest())
        now, ttl = time.monotonic(), behaviour.CACHE_TTL_S[parsed.cache_ttl]
        expires = self._expiry.get(key)
        if expires is not None and expires > now:
            self._expiry[key] = max(expires, now + ttl)
            return {}, tokens
        self._expiry[key] = now + ttl
        return {parsed.cache_ttl: tokens}, 0
