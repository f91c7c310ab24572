"""Bulk jobs over the Message Batches API: the API, the worker, the CLI."""
