"""Deployment files, replicas, shutdown and database outages."""
