"""Bulk jobs over the Message Batches API: the jobs service, the worker, its store and its client."""
