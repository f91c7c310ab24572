"""The cascade: policy, prompt, retries, stages, shadow calls, the response cache and batches."""
