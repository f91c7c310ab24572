"""The HTTP API as a client sees it: shapes, bounds, errors, the admin API, fuzzing."""
