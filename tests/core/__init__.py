"""Settings, logs, metrics and migrations."""
