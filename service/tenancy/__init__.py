"""Tenancy: teams, their API keys, Idempotency-Key claims and request rates."""
