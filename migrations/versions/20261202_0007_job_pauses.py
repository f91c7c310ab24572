"""jobs: a job can pause on the API's refusal (paused_upstream); the sweeper's index leaves batch rows out

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "('queued', 'running', 'paused_cost_cap', 'canceling', 'canceled', 'done')"
_AFTER = "('queued', 'running', 'paused_cost_cap', 'paused_upstream', 'canceling', 'canceled', 'done')"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_status_known"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_status_known"), "jobs", f"status IN {_AFTER}")
    # A Message Batch's rows may stay reserved for a day; the sweeper never takes them, so its index skips them.
    op.drop_index("ix_attempts_reserved", table_name="attempts")
    op.create_index(
        "ix_attempts_reserved",
        "attempts",
        ["reserved_at"],
        postgresql_where=sa.text("state = 'reserved' AND batch_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_attempts_reserved", table_name="attempts")
    op.create_index("ix_attempts_reserved", "attempts", ["reserved_at"], postgresql_where=sa.text("state = 'reserved'"))
    op.execute("UPDATE jobs SET status = 'running' WHERE status = 'paused_upstream'")
    op.drop_constraint(op.f("ck_jobs_status_known"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_status_known"), "jobs", f"status IN {_BEFORE}")
