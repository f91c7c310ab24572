"""jobs: bulk classification through the Message Batches API

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=20, scale=10)
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_detail", sa.Text(), nullable=True),
        sa.Column("task_hash", sa.String(length=64), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("threshold", sa.Numeric(precision=9, scale=6), nullable=False),
        sa.Column("cheap_model", sa.String(length=64), nullable=False),
        sa.Column("strong_model", sa.String(length=64), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("next_check_at", TZ, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", TZ, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'paused_cost_cap', 'canceling', 'canceled', 'done')",
            name=op.f("ck_jobs_status_known"),
        ),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_jobs_team_id_teams"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_team_created", "jobs", ["team_id", "created_at"])
    op.create_index(
        "ix_jobs_due", "jobs", ["next_check_at"], postgresql_where=sa.text("status NOT IN ('done', 'canceled')")
    )
    op.create_table(
        "job_batches",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("stage", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("anthropic_id", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("cap_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("reserved_usd", MONEY, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("submitted_at", TZ, nullable=True),
        sa.Column("ingested_at", TZ, nullable=True),
        sa.CheckConstraint(
            "state IN ('submitting', 'submitted', 'ingested', 'released')", name=op.f("ck_job_batches_state_known")
        ),
        sa.CheckConstraint("stage IN ('cheap', 'strong')", name=op.f("ck_job_batches_stage_known")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_batches_job_id_jobs"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_batches")),
        sa.UniqueConstraint("anthropic_id", name=op.f("uq_job_batches_anthropic_id")),
    )
    op.create_index("ix_job_batches_job", "job_batches", ["job_id"])
    op.create_table(
        "job_items",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('cheap_pending', 'cheap_sent', 'strong_pending', 'strong_sent', 'done', 'failed', 'canceled')",
            name=op.f("ck_job_items_state_known"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_items_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "seq", name=op.f("pk_job_items")),
        sa.UniqueConstraint("request_id", name=op.f("uq_job_items_request_id")),
    )
    op.create_index("ix_job_items_pending", "job_items", ["job_id", "state", "seq"])
    op.add_column("requests", sa.Column("job_id", sa.UUID(), nullable=True))
    op.create_index("ix_requests_job", "requests", ["job_id"], postgresql_where=sa.text("job_id IS NOT NULL"))
    op.add_column("attempts", sa.Column("batch_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_attempts_batch_id_job_batches"), "attempts", "job_batches", ["batch_id"], ["id"], ondelete="RESTRICT"
    )
    op.create_index("ix_attempts_batch", "attempts", ["batch_id"], postgresql_where=sa.text("batch_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_attempts_batch", table_name="attempts")
    op.drop_constraint(op.f("fk_attempts_batch_id_job_batches"), "attempts", type_="foreignkey")
    op.drop_column("attempts", "batch_id")
    op.drop_index("ix_requests_job", table_name="requests")
    op.drop_column("requests", "job_id")
    op.drop_table("job_items")
    op.drop_table("job_batches")
    op.drop_table("jobs")
