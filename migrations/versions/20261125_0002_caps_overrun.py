"""caps.overrun_usd: record a cost billed past a cap instead of failing the settle

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "caps", sa.Column("overrun_usd", sa.Numeric(precision=20, scale=10), server_default="0", nullable=False)
    )
    op.drop_constraint(op.f("ck_caps_within_cap"), "caps", type_="check")
    op.drop_constraint(op.f("ck_caps_amounts_not_negative"), "caps", type_="check")
    op.create_check_constraint("within_cap", "caps", "spent_usd + reserved_usd <= cap_usd + overrun_usd")
    op.create_check_constraint(
        "amounts_not_negative", "caps", "spent_usd >= 0 AND reserved_usd >= 0 AND overrun_usd >= 0"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_caps_within_cap"), "caps", type_="check")
    op.drop_constraint(op.f("ck_caps_amounts_not_negative"), "caps", type_="check")
    op.create_check_constraint("within_cap", "caps", "spent_usd + reserved_usd <= cap_usd")
    op.create_check_constraint("amounts_not_negative", "caps", "spent_usd >= 0 AND reserved_usd >= 0")
    op.drop_column("caps", "overrun_usd")
