"""evaluations: offline runs of a task over labelled texts (`cascade eval`), each item asked of both models

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=20, scale=10)


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("team_id", sa.UUID(), nullable=False),
        sa.Column("task_id", sa.UUID(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_detail", sa.Text(), nullable=True),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('running', 'done', 'stopped')", name=op.f("ck_eval_runs_status_known")),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_eval_runs_team_id_teams"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_eval_runs_task_id_tasks"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    op.create_table(
        "eval_items",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("gold", sa.Text(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("cheap_label", sa.Text(), nullable=True),
        sa.Column("cheap_confidence", sa.Numeric(precision=9, scale=6), nullable=True),
        sa.Column("cheap_cost_usd", MONEY, nullable=False),
        sa.Column("strong_label", sa.Text(), nullable=True),
        sa.Column("strong_cost_usd", MONEY, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_items_run_id_eval_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_eval_items")),
    )
    op.add_column("requests", sa.Column("eval_run_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("fk_requests_eval_run_id_eval_runs"), "requests", "eval_runs", ["eval_run_id"], ["id"], ondelete="RESTRICT"
    )


def downgrade() -> None:
    # Evaluation requests would rejoin the escalation reports as cascade decisions: refuse while there are any.
    runs = op.get_bind().execute(sa.text("SELECT count(*) FROM eval_runs")).scalar()
    if runs:
        raise RuntimeError(f"{runs} evaluation runs are recorded; 0008 cannot tell their requests apart")
    op.drop_constraint(op.f("fk_requests_eval_run_id_eval_runs"), "requests", type_="foreignkey")
    op.drop_column("requests", "eval_run_id")
    op.drop_table("eval_items")
    op.drop_table("eval_runs")
