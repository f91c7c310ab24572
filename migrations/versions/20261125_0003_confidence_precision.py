"""confidence and threshold to six decimal places, the precision the escalation decision uses

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [("requests", "threshold", False), ("requests", "confidence", True), ("attempts", "confidence", True)]


def upgrade() -> None:
    for table, column, nullable in COLUMNS:
        op.alter_column(
            table, column, type_=sa.Numeric(9, 6), existing_type=sa.Numeric(6, 4), existing_nullable=nullable
        )


def downgrade() -> None:
    for table, column, nullable in COLUMNS:
        op.alter_column(
            table, column, type_=sa.Numeric(6, 4), existing_type=sa.Numeric(9, 6), existing_nullable=nullable
        )
