"""The Anthropic-compatible simulator, through the real SDK."""
