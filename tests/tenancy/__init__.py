"""Teams, keys, isolation between teams, Idempotency-Key and rate limits."""
