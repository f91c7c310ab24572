"""The `cascade` command: one module per family of commands."""
