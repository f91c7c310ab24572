"""tasks: named, versioned tasks; the exact-match response cache; shadow calibration columns

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("examples", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("threshold", sa.Numeric(precision=9, scale=6), nullable=False),
        sa.Column("cheap_model", sa.String(length=64), nullable=False),
        sa.Column("strong_model", sa.String(length=64), nullable=False),
        sa.Column("shadow_rate", sa.Numeric(precision=9, scale=6), nullable=False),
        sa.Column("prompt_cache", sa.String(length=4), nullable=False),
        sa.Column("cache_ttl_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("cache_ttl_s >= 0", name=op.f("ck_tasks_cache_ttl_not_negative")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_tasks_version_positive")),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name=op.f("ck_tasks_threshold_probability")),
        sa.CheckConstraint("shadow_rate >= 0 AND shadow_rate <= 1", name=op.f("ck_tasks_shadow_rate_probability")),
        sa.CheckConstraint("prompt_cache IN ('5m', '1h')", name=op.f("ck_tasks_prompt_cache_known")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_tasks_team_id_teams"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("team_id", "name", "version", name="uq_tasks_team_name_version"),
    )
    op.add_column("requests", sa.Column("task_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("fk_requests_task_id_tasks"), "requests", "tasks", ["task_id"], ["id"], ondelete="RESTRICT"
    )
    op.add_column("requests", sa.Column("cache_hit", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("requests", sa.Column("cached_from", sa.UUID(), nullable=True))
    op.add_column("requests", sa.Column("shadow_label", sa.Text(), nullable=True))
    op.add_column(
        "requests",
        sa.Column("shadow_cost_usd", sa.Numeric(precision=20, scale=10), server_default="0", nullable=False),
    )
    op.create_index("ix_requests_task_created", "requests", ["task_id", "created_at"])
    op.create_table(
        "response_cache",
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Numeric(precision=9, scale=6), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_response_cache_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("team_id", "key", name=op.f("pk_response_cache")),
    )
    op.create_index("ix_response_cache_expires", "response_cache", ["expires_at"])
    # A shadow call (the strong model asked about a kept answer, for calibration) is a ledger row of its own.
    op.drop_constraint(op.f("ck_attempts_stage_known"), "attempts", type_="check")
    op.create_check_constraint(op.f("ck_attempts_stage_known"), "attempts", "stage IN ('cheap', 'strong', 'shadow')")


def downgrade() -> None:
    # Ledger rows are never deleted: a database that has shadow calls cannot go back below this revision.
    shadows = op.get_bind().execute(sa.text("SELECT count(*) FROM attempts WHERE stage = 'shadow'")).scalar()
    if shadows:
        raise RuntimeError(f"{shadows} shadow attempts are in the ledger; 0007 cannot hold them")
    op.drop_constraint(op.f("ck_attempts_stage_known"), "attempts", type_="check")
    op.create_check_constraint(op.f("ck_attempts_stage_known"), "attempts", "stage IN ('cheap', 'strong')")
    op.drop_index("ix_response_cache_expires", table_name="response_cache")
    op.drop_table("response_cache")
    op.drop_index("ix_requests_task_created", table_name="requests")
    for column in ("shadow_cost_usd", "shadow_label", "cached_from", "cache_hit"):
        op.drop_column("requests", column)
    op.drop_constraint(op.f("fk_requests_task_id_tasks"), "requests", type_="foreignkey")
    op.drop_column("requests", "task_id")
    op.drop_table("tasks")
