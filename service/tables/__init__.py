"""The ORM tables (SQLAlchemy 2, PostgreSQL), every family of them: what Alembic's migrations describe."""

from service.tables.ledger import (
    ApiKey,
    Attempt,
    Base,
    CachedResponse,
    Cap,
    EvalItem,
    EvalRun,
    IdempotencyKey,
    Job,
    JobBatch,
    JobItem,
    Request,
    TaskVersion,
    Team,
    table_names,
)

__all__ = [
    "ApiKey",
    "Attempt",
    "Base",
    "CachedResponse",
    "Cap",
    "EvalItem",
    "EvalRun",
    "IdempotencyKey",
    "Job",
    "JobBatch",
    "JobItem",
    "Request",
    "TaskVersion",
    "Team",
    "table_names",
]
