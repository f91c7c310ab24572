"""The dashboard: signed sessions, its pages, what a page gathers, and its templates and static files."""
