"""The cascade: the prompt, the upstream (the one SDK module), retries, the escalation policy and the stages."""
