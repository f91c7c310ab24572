"""The engine, and the one place a transaction is committed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.core.embedded import asyncpg_url, start_embedded
from service.core.errors import DatabaseUnavailable
from service.core.settings import Settings

# Errors that mean "the database cannot be reached", as opposed to a bug or a constraint violation.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.OperationalError,
)


# SQLSTATEs of transient failures worth a 503 and a retry: deadlock, serialization, query cancelled.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "57014", "57P01", "57P02", "57P03"}


logger = logging.getLogger(__name__)


def is_unreachable(exc: BaseException) -> bool:
    """True when the database could not serve the transaction (as opposed to a bug or a constraint)."""
    if isinstance(exc, _UNREACHABLE):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            return True
        name = type(exc.orig).__name__ if exc.orig is not None else ""
        return name in {
            "ConnectionDoesNotExistError",
            "CannotConnectNowError",
            "ConnectionFailureError",
            "AdminShutdownError",
            "CrashShutdownError",
            "InterfaceError",
            "TooManyConnectionsError",
        } or ("connection" in str(exc.orig).lower() and "closed" in str(exc.orig).lower())
    return False


def resolve_url(settings: Settings) -> str:
    if settings.database_url:
        return asyncpg_url(settings.database_url)
    return start_embedded(settings.data_dir)


class Database:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_timeout_s,
            # No pre-ping: it costs up to three round trips on every checkout. A connection that died with the
            # server fails its statement (503, the pool is invalidated) and the next checkout connects afresh.
            pool_pre_ping=False,
            hide_parameters=True,  # an error's text must not carry a key hash, labels or instructions into the logs
            connect_args={"timeout": settings.db_timeout_s, "command_timeout": settings.db_timeout_s * 2},
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # The same pool, without BEGIN/COMMIT round trips: for work that is one statement (atomic by itself).
        self._autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # Read-only, one snapshot for every statement: figures read by several statements agree with each other.
        self._snapshots = async_sessionmaker(
            self.engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True),
            expire_on_commit=False,
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A short transaction, committed on success; connectivity failures become DatabaseUnavailable."""
        async with self._translated(), self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction whose statements all see the same committed state (REPEATABLE READ).

        For reads of several statements that must agree (a report's request and attempt totals, the cap rows
        and the reservations behind them); at READ COMMITTED each statement would see a later commit.
        """
        async with self._translated(), self._snapshots() as session, session.begin():
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection whose every statement commits by itself: one round trip for one atomic statement,
        without the ORM session's bookkeeping (this is the request path's hot loop).

        Only for single statements (or independent reads); several statements here are several transactions.
        """
        async with self._translated(), self._autocommit_engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if is_unreachable(exc):
                logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
                raise DatabaseUnavailable() from exc
            raise

    async def ping(self) -> None:
        async with self.transaction() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
