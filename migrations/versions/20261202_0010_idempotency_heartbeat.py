"""idempotency_keys: alive_at, the claim's heartbeat, so a long request (a synchronous batch) keeps its key
while its holder lives, and only a dead holder's claim is taken over after the TTL

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A default, so that a replica still on the previous code can insert during a rolling upgrade; an existing
    # claim counts as alive at the migration (at worst a dead holder's key is taken over one TTL later).
    op.add_column(
        "idempotency_keys",
        sa.Column("alive_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("idempotency_keys", "alive_at")
