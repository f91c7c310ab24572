"""The ORM tables (SQLAlchemy 2, PostgreSQL), every family of them: what Alembic's migrations describe."""

from service.tables.base import Base, table_names
from service.tables.jobs import BATCH_STATES, ITEM_STATES, JOB_STATES, Job, JobBatch, JobItem
from service.tables.ledger import Attempt, Cap, Request
from service.tables.tasks import CachedResponse, EvalItem, EvalRun, TaskVersion
from service.tables.tenancy import ApiKey, IdempotencyKey, Team

__all__ = [
    "BATCH_STATES",
    "ITEM_STATES",
    "JOB_STATES",
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
