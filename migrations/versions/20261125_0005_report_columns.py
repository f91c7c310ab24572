"""report columns: what the reports read without joining the ledger to requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=20, scale=10)
STATISTICS = [
    ("st_requests_created_day", "requests", "(created_at AT TIME ZONE 'UTC')::date"),
    ("st_requests_created_hour", "requests", "date_trunc('hour', created_at AT TIME ZONE 'UTC')"),
    ("st_attempts_request_created_day", "attempts", "(request_created_at AT TIME ZONE 'UTC')::date"),
]


def upgrade() -> None:
    op.add_column("requests", sa.Column("cheap_label", sa.Text(), nullable=True))
    op.add_column("requests", sa.Column("cheap_confidence", sa.Numeric(precision=9, scale=6), nullable=True))
    op.add_column("requests", sa.Column("all_strong_cost_usd", MONEY, server_default="0", nullable=False))
    op.add_column("attempts", sa.Column("request_created_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("attempts", sa.Column("task_hash", sa.String(length=64), nullable=True))
    op.add_column("attempts", sa.Column("strong_equiv_usd", MONEY, nullable=True))
    # Backfill from the rows already there. The all-strong counterfactual needs the catalog's prices,
    # so rows written before this revision count 0 towards it (documented in docs/ARCHITECTURE.md).
    op.execute(
        "UPDATE attempts a SET request_created_at = r.created_at, task_hash = r.task_hash "
        "FROM requests r WHERE r.id = a.request_id"
    )
    op.execute(
        "UPDATE requests r SET cheap_label = a.label, cheap_confidence = a.confidence FROM attempts a "
        "WHERE a.request_id = r.id AND a.stage = 'cheap' AND a.outcome = 'answered'"
    )
    op.alter_column("attempts", "request_created_at", nullable=False)
    op.alter_column("attempts", "task_hash", nullable=False)
    op.create_index("ix_requests_created", "requests", ["created_at"])
    op.create_index("ix_attempts_request_created", "attempts", ["request_created_at"])
    op.create_index("ix_attempts_team_request_created", "attempts", ["team_id", "request_created_at"])
    # The reports group by these expressions; without statistics on them the planner expects one group per
    # row and sorts a million rows where a hash table of 30 days would do.
    for name, table, expression in STATISTICS:
        op.execute(f"CREATE STATISTICS {name} ON ({expression}) FROM {table}")


def downgrade() -> None:
    for name, _, _ in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
    op.drop_index("ix_attempts_team_request_created", table_name="attempts")
    op.drop_index("ix_attempts_request_created", table_name="attempts")
    op.drop_index("ix_requests_created", table_name="requests")
    op.drop_column("attempts", "strong_equiv_usd")
    op.drop_column("attempts", "task_hash")
    op.drop_column("attempts", "request_created_at")
    op.drop_column("requests", "all_strong_cost_usd")
    op.drop_column("requests", "cheap_confidence")
    op.drop_column("requests", "cheap_label")
