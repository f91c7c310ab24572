"""The `cascade` command and the demo."""
